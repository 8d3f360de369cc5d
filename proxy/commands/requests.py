"""`pgwarden request | requests | show | approve | deny | cancel | revoke`: the request workflow.

Each command is an `add_*` function (its arguments) and a `run_*` function (what it does, given
an `ApiClient`); `proxy/cli.py` lists them as rows. Output for people says what happened and what
to do next; `--json` prints the server's JSON unchanged.

`request --wait` polls the request until it leaves `pending` — active, denied, cancelled or lapsed
— for at most the policy's pending timeout (the server's `lapses_at`), with a spinner on stderr
when it is a terminal; it exits 0 once active, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from proxy.clock import SYSTEM_CLOCK
from proxy.commands import render
from proxy.commands.transport import ApiClient, JsonObject, add_json_flag, segment
from proxy.policy.durations import DurationError, parse_duration

POLL_INTERVAL = 1.0  # seconds between polls of `request --wait`
WAIT_MARGIN = timedelta(seconds=10)  # past `lapses_at`, for the server's sweep and clock skew
SPINNER = "|/-\\"
STATES = ("pending", "active", "denied", "cancelled", "lapsed", "expired", "revoked")


def duration_argument(text: str) -> str:
    """argparse type: a duration as the server takes it (checked here for a quick usage error)."""
    try:
        parse_duration(text)
    except DurationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None
    return text


# --- arguments --------------------------------------------------------------------------------


def add_request(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="the database to access, as named in the policy")
    parser.add_argument("--access", required=True, metavar="LEVEL", help="e.g. read-only")
    parser.add_argument("--duration", required=True, type=duration_argument,
                        help="how long, e.g. 90s, 30m, 2h")  # fmt: skip
    parser.add_argument("--reason", default="", help="why (shown to approvers)")
    parser.add_argument("--wait", action="store_true", help="wait for the decision")
    add_json_flag(parser)


def add_requests(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", choices=STATES, help="only requests in this state")
    parser.add_argument("--limit", type=int, default=100, help="at most this many (newest first)")
    add_json_flag(parser)


def add_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", metavar="ID", help="the request's id")
    add_json_flag(parser)


def add_approve(parser: argparse.ArgumentParser) -> None:
    add_id(parser)
    parser.add_argument("--comment", default="", help="a note for the requester and the record")


def add_deny(parser: argparse.ArgumentParser) -> None:
    add_id(parser)
    parser.add_argument("--reason", required=True, help="why (shown to the requester)")


def add_revoke(parser: argparse.ArgumentParser) -> None:
    add_id(parser)
    parser.add_argument("--reason", default="", help="why (shown in the ended sessions)")


# --- commands ---------------------------------------------------------------------------------


def run_request(args: argparse.Namespace, client: ApiClient) -> int:
    body = {"target": args.target, "access_level": args.access, "duration": args.duration,
            "reason": args.reason}  # fmt: skip
    created = client.post("/api/v1/requests", body)
    if args.wait and created["state"] == "pending":
        if not args.json:
            print(describe(created))
        created = wait_for_decision(client, created, progress=not args.json)
        if args.json:
            _print_json(created)
        else:
            print(describe(created))
        return 0 if created["state"] == "active" else 1
    if args.json:
        _print_json(created)
        return 0
    print(describe(created))
    if created.get("clamped"):
        print(f"note: you asked for {created['requested_duration']}; the policy allows at most "
              f"{created['duration']}")  # fmt: skip
    return 0


def run_requests(args: argparse.Namespace, client: ApiClient) -> int:
    query = {"limit": str(args.limit)} | ({"state": args.state} if args.state else {})
    found = client.get("/api/v1/requests", query)["requests"]
    if args.json:
        _print_json({"requests": found})
        return 0
    if not found:
        print("no requests" + (f" in state {args.state}" if args.state else ""))
        return 0
    reference = render.now()
    rows = [
        (r["id"], r["state"], r["requester"], r["target"], r["access_level"], r["duration"],
         render.short_time(r["created_at"], reference), _window(r, reference), r["reason"])
        for r in found
    ]  # fmt: skip
    headers = ("ID", "STATE", "REQUESTER", "TARGET", "LEVEL", "DURATION", "CREATED", "ENDS",
               "REASON")  # fmt: skip
    print(render.table(headers, rows))
    return 0


def run_show(args: argparse.Namespace, client: ApiClient) -> int:
    found = client.get(f"/api/v1/requests/{segment(args.request_id)}")
    if args.json:
        _print_json(found)
        return 0
    print(details(found))
    return 0


def run_approve(args: argparse.Namespace, client: ApiClient) -> int:
    body = {"comment": args.comment} if args.comment else {}
    return _act(args, client, "approve", body, "approved")


def run_deny(args: argparse.Namespace, client: ApiClient) -> int:
    return _act(args, client, "deny", {"reason": args.reason}, "denied")


def run_cancel(args: argparse.Namespace, client: ApiClient) -> int:
    return _act(args, client, "cancel", None, "cancelled")


def run_revoke(args: argparse.Namespace, client: ApiClient) -> int:
    body = {"reason": args.reason} if args.reason else {}
    status = _act(args, client, "revoke", body, "revoked")
    if status == 0 and not args.json:
        print("its live sessions are being ended now")
    return status


def _act(
    args: argparse.Namespace, client: ApiClient, verb: str, body: JsonObject | None, done: str
) -> int:
    result = client.post(f"/api/v1/requests/{segment(args.request_id)}/{verb}", body)
    if args.json:
        _print_json(result)
    else:
        print(f"{done}: {describe(result)}")
    return 0


# --- waiting ----------------------------------------------------------------------------------


def wait_for_decision(
    client: ApiClient,
    request: JsonObject,
    *,
    progress: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> JsonObject:
    """Poll until the request is no longer pending, or its pending timeout (plus a margin) is
    over; the last state seen is returned."""
    lapses_at = render.parse_time(request.get("lapses_at"))
    budget = (lapses_at - render.now()) if lapses_at else timedelta(hours=1)
    deadline = SYSTEM_CLOCK.monotonic() + max(budget, timedelta(0)).total_seconds()
    deadline += WAIT_MARGIN.total_seconds()
    show_progress = progress and sys.stderr.isatty()
    started, tick = SYSTEM_CLOCK.monotonic(), 0
    path = f"/api/v1/requests/{segment(request['id'])}"
    try:
        while request["state"] == "pending" and SYSTEM_CLOCK.monotonic() < deadline:
            if show_progress:
                waited = round(SYSTEM_CLOCK.monotonic() - started)
                status = request.get("approval") or {}
                needs = f" ({_needs(status)})" if status else ""
                line = f"\r{SPINNER[tick % len(SPINNER)]} waiting for approval{needs}, {waited}s"
                sys.stderr.write(line[:200] + "\x1b[K")
                sys.stderr.flush()
            tick += 1
            sleep(POLL_INTERVAL)
            request = client.get(path)
    finally:
        if show_progress:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
    return request


# --- text -------------------------------------------------------------------------------------


def describe(request: JsonObject) -> str:
    """Two or three lines: the request and its state, then what to do next."""
    reference = render.now()
    rid, state = request["id"], request["state"]
    what = f"{request['access_level']} on {request['target']} for {request['duration']}"
    lines = [f"request {rid} is {state}: {what}, asked by {request['requester']}"]
    if state == "pending":
        status = request.get("approval")
        lapse = render.when(request.get("lapses_at"), reference)
        needs = f"it needs {_needs(status)}; " if status else ""
        lines.append(f"{needs}it lapses at {lapse} without a decision")
        lines.append(f"an approver runs: pgwarden approve {rid}")
    elif state == "active":
        lines.append(f"active until {render.when(request.get('ends_at'), reference)}")
        lines.append(f"connect with: pgwarden psql {rid}  (or: pgwarden credentials {rid})")
    else:
        by = f" by {request['closed_by']}" if request.get("closed_by") else ""
        why = f": {request['close_reason']}" if request.get("close_reason") else ""
        lines.append(f"{state}{by} at {render.when(request.get('closed_at'), reference)}{why}")
    return render.clean(lines[0]) + "\n" + "\n".join(render.clean(line) for line in lines[1:])


def details(request: JsonObject) -> str:
    reference = render.now()
    pairs: list[tuple[str, object]] = [
        ("request", request["id"]),
        ("state", request["state"]),
        ("requester", request["requester"]),
        ("access", f"{request['access_level']} on {request['target']}"),
        ("duration", request["duration"] + (f" (asked {request['requested_duration']})"
                                            if request.get("clamped") else "")),
        ("reason", request["reason"] or "-"),
        ("created", render.when(request["created_at"], reference)),
    ]  # fmt: skip
    if request.get("approval"):
        pairs.append(("needs", _needs(request["approval"])))
        pairs.append(("lapses", render.when(request.get("lapses_at"), reference)))
    if request.get("activated_at"):
        pairs.append(("active", f"from {render.when(request['activated_at'], reference)}"))
        pairs.append(("ends", render.when(request["ends_at"], reference)))
    if request.get("closed_at"):
        why = f": {request['close_reason']}" if request.get("close_reason") else ""
        closed = f"{render.when(request['closed_at'], reference)} by {request['closed_by']}{why}"
        pairs.append(("closed", closed))
    parts = [render.fields(pairs)]
    approvals: list[Any] = request.get("approvals") or []
    if approvals:
        given = [(a["approver"], render.short_time(a["at"], reference), a["comment"])
                 for a in approvals]  # fmt: skip
        parts.append("approvals:\n" + _indent(render.table(("BY", "AT", "COMMENT"), given)))
    history: list[Any] = request.get("history") or []
    if history:
        steps = [
            (render.short_time(h["at"], reference), h["action"], h["actor"],
             f"{h['from_state'] or '-'} -> {h['to_state']}", h["why"])
            for h in history
        ]  # fmt: skip
        headers = ("AT", "ACTION", "BY", "STATE", "WHY")
        parts.append("history:\n" + _indent(render.table(headers, steps)))
    return "\n".join(parts)


def _needs(status: JsonObject) -> str:
    who = [
        *status.get("approver_users", []),
        *(f"{g} (group)" for g in status.get("approver_groups", [])),
    ]
    missing = status.get("missing", 0)
    noun = "approval" if missing == 1 else "approvals"
    return f"{missing} more {noun} from: {', '.join(who) or 'nobody eligible'}"


def _window(request: JsonObject, reference: datetime) -> str:
    """When access ended or ends: the closing time of a finished grant, else the window's end."""
    if request["state"] == "pending":
        return "-"
    return render.short_time(request.get("closed_at") or request.get("ends_at"), reference)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2))
