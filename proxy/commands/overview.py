"""`pgwarden targets | status`: what I may request, and what I hold or wait for now.

`targets` prints `GET /api/v1/targets`: one row per target and access level with its longest
grant, who approves and how many, whether a reason is required, and the auto-approval that
applies to you. `status` prints `GET /api/v1/status`: your active grants with the time left and
your pending requests with what they still need. Times left are measured against the server's
clock (`now` in its answer), so a skewed laptop clock does not misstate them. `--json` prints
the server's JSON unchanged.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta
from typing import Any

from proxy.commands import render
from proxy.commands.transport import ApiClient, JsonObject, add_json_flag


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_json_flag(parser)


def run_targets(args: argparse.Namespace, client: ApiClient) -> int:
    document = client.get("/api/v1/targets")
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    targets: list[Any] = document["targets"]
    if not targets:
        print("there is nothing you may request under the current policy; ask a pgwarden admin")
        return 0
    rows: list[tuple[object, ...]] = [
        (t["name"], level["name"], level["max_duration"], approvers(level["approval"]),
         "required" if level["approval"]["require_reason"] else "optional",
         _auto(level.get("auto_approval")), t["description"])
        for t in targets
        for level in t["access_levels"]
    ]  # fmt: skip
    headers: tuple[str, ...] = (
        "TARGET", "LEVEL", "MAX", "APPROVED BY", "REASON", "AUTO-APPROVED", "DESCRIPTION",
    )  # fmt: skip
    if not any(t["description"] for t in targets):
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    print(render.table(headers, rows))
    print("ask with: pgwarden request TARGET --access LEVEL --duration 30m --reason '...'")
    return 0


def run_status(args: argparse.Namespace, client: ApiClient) -> int:
    document = client.get("/api/v1/status")
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    print(summary(document))
    return 0


def summary(document: JsonObject) -> str:
    """Active grants, then pending requests, each as a table; or what to do when there are none."""
    reference = render.parse_time(document.get("now")) or render.now()
    active: list[Any] = document["active"]
    pending: list[Any] = document["pending"]
    if not active and not pending:
        return "no active grants and no pending requests; what you may ask for: pgwarden targets"
    parts: list[str] = []
    if active:
        rows = [
            (r["id"], r["target"], r["access_level"], render.short_time(r["ends_at"], reference),
             _left(r, reference), r["reason"])
            for r in active
        ]  # fmt: skip
        table = render.table(("ID", "TARGET", "LEVEL", "ENDS", "LEFT", "REASON"), rows)
        parts.append(f"active grants ({len(active)}); connect with: pgwarden psql ID\n{table}")
    if pending:
        rows = [
            (r["id"], r["target"], r["access_level"], r["duration"],
             approvals_needed(r.get("approval")),
             render.relative(render.parse_time(r.get("lapses_at")) or reference, reference))
            for r in pending
        ]  # fmt: skip
        table = render.table(("ID", "TARGET", "LEVEL", "DURATION", "NEEDS", "LAPSES"), rows)
        parts.append(f"pending requests ({len(pending)})\n{table}")
    return "\n\n".join(parts)


def approvers(rule: JsonObject) -> str:
    """`2 of: dba (group), carol`."""
    who = [*(f"{g} (group)" for g in rule["approver_groups"]), *rule["approver_users"]]
    return f"{rule['required']} of: {', '.join(who) or 'nobody eligible'}"


def approvals_needed(status: JsonObject | None) -> str:
    """`1 from: dba (group)`; `-` when the server did not say (the level left the policy)."""
    if not status:
        return "-"
    who = [*status["approver_users"], *(f"{g} (group)" for g in status["approver_groups"])]
    return f"{status['missing']} from: {', '.join(who) or 'nobody eligible'}"


def _auto(auto: JsonObject | None) -> str:
    return "-" if not auto else f"up to {auto['max_duration']}"


def _left(request: JsonObject, reference: datetime) -> str:
    ends = render.parse_time(request.get("ends_at"))
    if ends is None:
        return "-"
    return render.humane(max(ends - reference, timedelta(0)))
