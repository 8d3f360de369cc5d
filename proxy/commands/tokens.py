"""`pgwarden token create|list|revoke`: manage API tokens, on the server host, in its state store.

These open the server's config (for the state store and the policy) and work on the store
directly (the SQLite file, or the PostgreSQL database of `state.backend: postgres`), so they
work whether or not `pgwarden serve` is running. `create` prints the token once;
only its SHA-256 digest is stored (`auth.py`). `list` never shows a secret.

`create` and `revoke` are recorded in the audit log before they take effect (`token_audit.py`):
if the record cannot be written, nothing changes and the command exits 2.

Exit status: 0 done; 1 refused (unknown user, unknown or already revoked token); 2 the config,
policy or state file cannot be used (one line per problem, naming the setting and the fix, as
`pgwarden serve` says it). A command that fails creates no state file: `create` checks the user
against the policy first, and `list` and `revoke` do not create one that is not there yet. Nor
does `create` make one where the audit log shows a state store that is gone (as `serve`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from proxy.api.auth import new_token
from proxy.api.views import timestamp
from proxy.audit.events import TokenCreated, TokenRevoked
from proxy.clock import SYSTEM_CLOCK
from proxy.commands.token_audit import os_user, recorded_ahead
from proxy.config import ConfigError, ServerConfig, load_config
from proxy.errors import PgwardenError
from proxy.grants.store import Store
from proxy.grants.store_schema import TokenRecord
from proxy.policy.models import UserName
from proxy.runtime.startup import (
    StartupError,
    audit_key,
    check_file_location,
    config_problem,
    earlier_life,
    load_startup_policy,
    lost_state,
    open_state_store,
)

DEFAULT_CONFIG = "pgwarden.yaml"


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None,
        help=f"the server config (default: $PGWARDEN_CONFIG, else ./{DEFAULT_CONFIG})",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def add_create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", help="the policy user the token speaks for")
    add_common(parser)


def add_revoke_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("token_id", metavar="ID", help="the token's id, from `pgwarden token list`")
    add_common(parser)


def run_create(args: argparse.Namespace) -> int:
    def known_user(config: ServerConfig) -> str | None:
        # The key first: a token is recorded before it is made, so without it nothing starts.
        audit_key(config.audit.hmac_key, config.paths.audit_log)
        policy = load_startup_policy(config)
        if args.user in policy.users:
            return None
        known = ", ".join(sorted(policy.users)[:20])
        return f"{args.user!r} is not a user in the policy {policy.source} ({known})"

    def insert(config: ServerConfig, store: Store) -> int:
        user = UserName(args.user)
        secret, record = new_token(user, SYSTEM_CLOCK.now())
        with recorded_ahead(config, TokenCreated(record.id, user, os_user())), store.write() as tx:
            tx.insert_token(record)
        if args.json:
            print(json.dumps({**_token_view(record), "token": secret}))
        else:
            print(secret)
            print(
                f"token {record.id} for {user}: shown once, keep it secret; the user sets "
                "PGWARDEN_TOKEN to it (and PGWARDEN_URL to this server's API)",
                file=sys.stderr,
            )
        return 0

    return _with_store(args, insert, create=True, refuse=known_user)


def run_list(args: argparse.Namespace) -> int:
    def show(config: ServerConfig, store: Store) -> int:
        with store.read() as tx:
            records = tx.tokens()
        if args.json:
            print(json.dumps({"tokens": [_token_view(r) for r in records]}))
            return 0
        rows = [
            (r.id, r.user, _at(r.created_at), _at(r.last_used_at) or "never",
             f"revoked {_at(r.revoked_at)}" if r.revoked_at else "active")
            for r in records
        ]  # fmt: skip
        headers = ("ID", "USER", "CREATED", "LAST USED", "STATUS")
        widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
        for row in (headers, *rows):
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if not rows:
            print("no tokens yet: pgwarden token create USER")
        return 0

    return _with_store(args, show)


def run_revoke(args: argparse.Namespace) -> int:
    def revoke(config: ServerConfig, store: Store) -> int:
        with store.read() as tx:
            known = any(r.id == args.token_id and r.revoked_at is None for r in tx.tokens())
        if not known:
            return _refuse(f"no active token {args.token_id!r} (see: pgwarden token list)")
        event = TokenRevoked(args.token_id, os_user())
        with recorded_ahead(config, event), store.write() as tx:
            done = tx.revoke_token(args.token_id, SYSTEM_CLOCK.now())
        if not done:  # revoked by another command meanwhile
            return _refuse(f"no active token {args.token_id!r} (see: pgwarden token list)")
        print(json.dumps({"id": args.token_id, "revoked": True}) if args.json else
              f"token {args.token_id} revoked")  # fmt: skip
        return 0

    return _with_store(args, revoke)


def _with_store(
    args: argparse.Namespace,
    work: Callable[[ServerConfig, Store], int],
    *,
    create: bool = False,
    refuse: Callable[[ServerConfig], str | None] = lambda config: None,
) -> int:
    """Run `work` on the config's state store. `create`: make the store if it is not there yet
    (else say so and make nothing); `refuse`: the command's own check, before the store opens."""
    try:
        config = load_config(_config_path(args))
    except ConfigError as exc:
        return _unusable(config_problem(exc, "--config or PGWARDEN_CONFIG"))
    try:
        if (why := refuse(config)) is not None:
            return _refuse(why)
        state = config.paths.state  # None: a PostgreSQL store (no file to check)
        if state is not None:
            check_file_location("paths.state", state)
        if create and earlier_life(config):
            raise StartupError(lost_state(config))
        if not create and state is not None and not state.exists():
            return _unusable(
                f"paths.state: {state} does not exist yet; `pgwarden serve` or "
                "`pgwarden token create` creates it"
            )
        with contextlib.closing(open_state_store(config)) as store:
            return work(config, store)
    except StartupError as exc:
        return _unusable(*exc.problems)
    except PgwardenError as exc:  # the store refused the work itself
        return _unusable(str(exc))


def _config_path(args: argparse.Namespace) -> Path:
    given: Path | None = args.config
    return given or Path(os.environ.get("PGWARDEN_CONFIG") or DEFAULT_CONFIG)


def _refuse(message: str) -> int:
    print(f"pgwarden: {message}", file=sys.stderr)
    return 1


def _unusable(*problems: str) -> int:
    for problem in problems:
        print(f"pgwarden: {problem}", file=sys.stderr)
    return 2


def _token_view(record: TokenRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "user": record.user,
        "created_at": timestamp(record.created_at),
        "last_used_at": _at(record.last_used_at),
        "revoked_at": _at(record.revoked_at),
    }


def _at(at: datetime | None) -> str | None:
    return None if at is None else timestamp(at)
