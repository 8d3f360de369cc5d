"""`pgwarden store migrate --from sqlite:PATH --to postgres`: move a one-host state to PostgreSQL.

The config (`--config`) names the PostgreSQL store (`state: {backend: postgres, ...}`); `--from`
names the SQLite state file of the single-host setup, which is read once and never written (an
older schema is brought up to date in the copy in memory, `grants/store_copy.py`). Every table is
copied in one transaction under the store's write lock and checked before its COMMIT: the
counts, every row, and each request with its whole history read back through `StoreTx` on both
sides. Into a store that already holds requests or tokens nothing is copied: there is no
override (start from an empty schema instead).

It is an admin action on the state, so it is recorded ahead in the commands' audit chain as the
token commands are (`token_audit.py`): `state.migrated`, then its outcome. Stop the server that
uses the file first: what it changes after the copy stays in the file.

Exit status: 0 copied and checked; 1 refused: the PostgreSQL store is not empty, or the check
found a difference (rolled back: nothing copied); 2 the arguments, config, source file, audit
log or database cannot be used (one line per problem; nothing copied).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from proxy.audit.events import StateMigrated
from proxy.clock import SYSTEM_CLOCK
from proxy.commands.token_audit import os_user, recorded_ahead
from proxy.commands.tokens import DEFAULT_CONFIG
from proxy.config import ConfigError, ServerConfig, StateBackend, load_config
from proxy.grants.store_copy import (
    CopyMismatch,
    CopyRefused,
    PostgresTarget,
    Snapshot,
    read_snapshot,
)
from proxy.grants.store_schema import SCHEMA_VERSION
from proxy.grants.store_watch import StoreError
from proxy.runtime.startup import StartupError, audit_key, config_problem, state_dsn

EXIT_REFUSED = 1
EXIT_UNUSABLE = 2
SQLITE_PREFIX = "sqlite:"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=None,
        help=f"the server config whose state: section names the PostgreSQL store "
        f"(default: $PGWARDEN_CONFIG, else ./{DEFAULT_CONFIG})",
    )  # fmt: skip
    parser.add_argument(
        "--from", dest="source", type=_source, required=True, metavar="sqlite:PATH",
        help="the SQLite state file to copy (read only, never changed)",
    )  # fmt: skip
    parser.add_argument(
        "--to", dest="target", type=_target, required=True, metavar="postgres",
        help="postgres: the store the config's state: section names (it must be empty)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(_config_path(args))
    except ConfigError as exc:
        return _say(EXIT_UNUSABLE, config_problem(exc, "--config or PGWARDEN_CONFIG"))
    if config.state.backend is not StateBackend.POSTGRES:
        return _say(EXIT_UNUSABLE, _not_postgres(config))
    try:
        audit_key(config.audit.hmac_key, config.paths.audit_log)  # no record, no copy
        # Sign-in flows and ended sessions stay behind (store_copy.drop_ended).
        with contextlib.closing(read_snapshot(args.source, SYSTEM_CLOCK.now())) as snapshot:
            target = PostgresTarget(state_dsn(config.state), config.state.schema)
            with contextlib.closing(target):
                return _migrate(config, snapshot, target)
    except StartupError as exc:
        return _say(EXIT_UNUSABLE, *exc.problems)
    except (CopyRefused, CopyMismatch) as exc:
        return _say(EXIT_REFUSED, exc.message)
    except StoreError as exc:
        return _say(EXIT_UNUSABLE, exc.message)


def _migrate(config: ServerConfig, snapshot: Snapshot, target: PostgresTarget) -> int:
    target.refuse_unless_empty()  # before the record: a refusal changes nothing, records nothing
    counts = snapshot.counts()
    event = StateMigrated(
        str(snapshot.path), target.where, counts["requests"], counts["api_tokens"], os_user()
    )
    with recorded_ahead(config, event):
        copied = target.copy(snapshot)
    print(
        f"copied {copied['requests']} requests ({copied['transitions']} transitions, "
        f"{copied['approvals']} approvals, {copied['credentials']} credentials), "
        f"{copied['api_tokens']} API tokens from {snapshot.path}{_migrated(snapshot)} to "
        f"{target.where}; checked: counts and every request's history are equal"
    )
    if snapshot.wal:
        print(
            f"pgwarden: note: {snapshot.path}-wal exists, so a server may still use the file: "
            "what it changes from now on is not in the copy; stop it, and start the servers "
            "on the PostgreSQL store",
            file=sys.stderr,
        )
    return 0


def _config_path(args: argparse.Namespace) -> Path:
    given: Path | None = args.config
    return given or Path(os.environ.get("PGWARDEN_CONFIG") or DEFAULT_CONFIG)


def _migrated(snapshot: Snapshot) -> str:
    if snapshot.version == SCHEMA_VERSION:
        return ""
    return f" (schema version {snapshot.version}, brought to {SCHEMA_VERSION} in the copy)"


def _source(value: str) -> Path:
    path = value.removeprefix(SQLITE_PREFIX)
    if not value.startswith(SQLITE_PREFIX) or not path:
        raise argparse.ArgumentTypeError(
            f"takes sqlite:PATH, the SQLite state file to copy (e.g. "
            f"sqlite:/var/lib/pgwarden/state.db), not {value!r}"
        )
    return Path(path)


def _target(value: str) -> str:
    if value != "postgres":
        raise argparse.ArgumentTypeError(
            f"takes postgres (the store the config's state: section names), not {value!r}; "
            "a copy goes from SQLite into PostgreSQL only"
        )
    return value


def _not_postgres(config: ServerConfig) -> str:
    return (
        f"state.backend: the config {config.source} keeps its state in SQLite (paths.state); "
        "--to postgres copies into the store of a config with state: {backend: postgres, "
        "dsn_env: VAR (or dsn_file: PATH), schema: NAME}"
    )


def _say(status: int, *problems: str) -> int:
    for problem in problems:
        print(f"pgwarden: {problem}", file=sys.stderr)
    return status
