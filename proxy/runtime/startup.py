"""What `pgwarden serve` checks and opens before it listens, and the errors it gives people.

A start that fails must leave nothing behind: no directory, no state file, no audit record. So
`Runtime` (serve.py) starts in this order:

1. check, creating nothing, and report every problem at once (`check_startup`): the policy
   loads; the audit HMAC key is set and long enough; the state file's and the audit log's
   directories exist and are writable; the state file is there unless this is a first start
   (`check_state_file`); the client TLS files make a context; the listen addresses are free;
2. open the state store (`open_store`); a file this run created is removed again if the start
   fails before the audit log opens (`discard_new_state`);
3. open the audit log (`open_audit`), which writes `audit.opened`, then `state.created` if this
   run made the state file;
4. bind the listeners (`Runtime.start`; a bind error becomes `listen_error`).

A missing state file is a first start only if the audit log has no files either. Otherwise a
server ran here with a state store that is gone (deleted, or a volume not mounted), and a new,
empty one would silently forget every grant and API token: `pgwarden serve` refuses, naming both
paths, unless started with `--new-state` — which, to stay a one-time decision rather than a
standing flag in a unit file, is refused in turn while the state file exists.

The audit log opens before the listeners bind, not after: a listener accepts clients from its
first moment, and the log must already be open to record the first session (or, failing closed,
to refuse it). So `audit.opened` means "a server passed every startup check and is about to
serve; what it does is recorded from here". Only a port taken by another process in the moment
between the check and the bind can still fail a start after the log opened; the server then
closes what it opened (`audit.closed` follows at once) and names the address, and keeps the state
file it made: the log now records a start with it, and the next start finds the two together.

Every failure a person can cause is a `StartupError`: one line per problem, naming the setting or
file, what is wrong and the fix. `pgwarden serve` prints them and exits 2; so do the `token`
commands.

With `state.backend: postgres` the state lives in a database (`open_state_store`), and the file
checks above do not apply: there is no file to create or lose between runs. pgwarden creates its
schema when it is missing (the database's own backups keep its history), so `--new-state` is
refused as meaningless there, and a start that fails leaves the schema it may have made, empty.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from proxy.audit import AuditLog, AuditUnavailable
from proxy.audit.events import StateCreated
from proxy.audit.records import MIN_KEY_BYTES, log_files
from proxy.clock import Clock
from proxy.config import (
    AuditSettings,
    ConfigError,
    ConfigUnreadable,
    ListenAddress,
    ServerConfig,
    StateBackend,
    StateSettings,
    replica_name_problem,
)
from proxy.errors import PgwardenError
from proxy.grants.pg_store import PostgresStore
from proxy.grants.requests import Transition
from proxy.grants.store import SqliteStore, Store, StoreError, StoreTx
from proxy.grants.store_watch import FileIdentity
from proxy.net.certs import CertificateError
from proxy.net.listen import bind_problem, listen_problem
from proxy.policy.models import Policy, SecretRef, SecretUnavailable
from proxy.policy.policy_file import PolicyError, PolicyUnreadable, load_policy
from proxy.policy.reload import PolicyHolder, ReloadHook
from proxy.runtime.auditing import SecretsToRedact, open_audit_log
from proxy.runtime.proxy_context import server_tls
from proxy.session.context import ClientTls

log = logging.getLogger(__name__)

# What the fix of a missing audit key suggests: 32 random bytes, written as 64 hex digits.
KEY_COMMAND = "openssl rand -hex 32"
# The files SQLite keeps beside a database while it is open (WAL mode) or after a crash.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

T = TypeVar("T")
P = ParamSpec("P")


class StartupError(PgwardenError):
    """pgwarden cannot start for reasons a person can fix: each of `problems` is one line that
    names the setting or file, what is wrong and the fix."""

    sqlstate = "F0000"  # config_file_error

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Checked:
    """What the checks produced on the way, so that nothing is read twice."""

    policy: PolicyHolder
    audit_key: bytes
    client_tls: ClientTls | None


def config_problem(exc: ConfigError, how_to_name: str = "--config") -> str:
    """The one line for a server config that cannot be used (`how_to_name`: where its path
    comes from, for the fix of an unreadable one)."""
    if isinstance(exc, ConfigUnreadable):
        return f"{_first_problem(exc)}; give the server config's path with {how_to_name}"
    return f"{exc}; see: pgwarden config check {exc.source}"


def load_startup_policy(config: ServerConfig) -> Policy:
    """The policy the config names, once (the commands that are not a server)."""
    try:
        return load_policy(config.paths.policy, people_from_identity=config.identity is not None)
    except PolicyError as exc:
        raise _policy_error(exc, config) from None


def check_startup(
    config: ServerConfig,
    audit_path: Path,
    on_reload: ReloadHook,
    *,
    listen: bool,
    new_state: bool = False,
) -> Checked:
    """Everything that can be checked before a file is created, every problem at once (so that
    an admin fixes them in one go); raises StartupError. `listen`: a primary, so also check the
    state file's life and that the listen addresses are free (a worker opens the file its
    primary opened; the primary holds its port, and it serves no API)."""
    problems: list[str] = []
    policy = _checked(problems, _open_policy, config, on_reload)
    key = _checked(problems, audit_key, config.audit.hmac_key, audit_path)
    state = config.paths.state
    if state is None:  # a PostgreSQL store: its DSN must be there (module docstring)
        _checked(problems, state_dsn, config.state)
        if new_state:
            problems.append(NEW_STATE_IN_POSTGRES)
    elif _checked(problems, check_file_location, "paths.state", state) and listen:
        _checked(problems, check_state_file, config, new_state=new_state)
    _checked(problems, check_file_location, "paths.audit_log", audit_path)
    tls = _checked(problems, _server_tls, config)
    if listen:
        addresses = [
            ("proxy.listen", config.proxy.listen.host, config.proxy.listen.port),
            ("api.listen", config.api.listen.host, config.api.listen.port),
        ]
        if (problem := listen_problem(addresses)) is not None:
            problems.append(f"{problem[0]}: {problem[1]}")
    if problems:
        raise StartupError(*problems)
    # No problem: every check returned its value.
    assert policy is not None
    assert key is not None
    return Checked(policy, key, tls)


NEW_STATE_IN_POSTGRES = (
    "--new-state: is for the SQLite state file (paths.state); with state.backend: postgres "
    "pgwarden makes its schema when it is missing; start without --new-state"
)


def check_state_file(config: ServerConfig, *, new_state: bool) -> None:
    """The state file is there, or this is a first start, or `--new-state` says to start anew
    (and only then: see the module docstring)."""
    state = config.paths.state
    if state is None:
        return  # a PostgreSQL store: no file
    if new_state and state.exists():
        raise StartupError(
            f"paths.state: {state} exists, and --new-state makes a new state store only where "
            "there is none; start without --new-state to use it"
        )
    if not new_state and earlier_life(config):
        raise StartupError(lost_state(config))


def earlier_life(config: ServerConfig) -> bool:
    """Whether the state file is missing although the audit log shows a server ran here (never
    with a PostgreSQL store: no file to lose)."""
    if config.paths.state is None or config.paths.state.exists():
        return False
    try:
        return bool(log_files(config.paths.audit_log))
    except OSError:  # an unreadable directory: its own check says so
        return False


def lost_state(config: ServerConfig) -> str:
    """The one line for a state file that is gone after an earlier life."""
    state, audit = config.paths.state, config.paths.audit_log
    return (
        f"paths.state: {state} does not exist, but the audit log {audit} shows that pgwarden "
        "ran here before; a new state store would forget every grant and API token. Restore "
        f"{state} from a backup, or start anew with: pgwarden serve --config {config.source} "
        "--new-state"
    )


def audit_key(ref: SecretRef, audit_path: Path) -> bytes:
    """The audit HMAC key, read and checked; the message never shows the key itself."""
    setting = "audit.hmac_key_env" if ref.env is not None else "audit.hmac_key_file"
    try:
        key = ref.read().encode("utf-8")
    except SecretUnavailable as exc:
        problem = _missing(ref, exc)
        raise StartupError(f"{setting}: {problem}; {_set_key(ref, audit_path)}") from None
    if len(key) < MIN_KEY_BYTES:
        where = f"environment variable {ref.env}" if ref.env else f"file {ref.file}"
        raise StartupError(
            f"{setting}: {where} holds {len(key)} bytes, fewer than the {MIN_KEY_BYTES} an "
            f"HMAC key needs; {_set_key(ref, audit_path)}"
        )
    return key


def check_file_location(setting: str, path: Path) -> bool:
    """`path` is a file pgwarden may create or open for writing: its directory exists and is
    writable (pgwarden never creates directories: their owner and mode are the admin's). True,
    or StartupError."""
    directory = path.parent
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise StartupError(
            f"{setting}: the directory {directory} {what}; create it (mkdir -p {directory}), "
            "owned by the user pgwarden runs as"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StartupError(
            f"{setting}: the directory {directory} is not writable by this user "
            f"(uid {os.geteuid()}); give it to the user pgwarden runs as"
        )
    if path.is_dir():
        raise StartupError(f"{setting}: {path} is a directory; name a file inside it")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StartupError(
            f"{setting}: {path} cannot be read and written by this user (uid {os.geteuid()}); "
            "give it to the user pgwarden runs as"
        )
    return True


def open_store(
    path: Path,
    on_commit: Callable[[list[Transition]], None] | None = None,
    *,
    create: bool = True,
    expect: FileIdentity | None = None,
    before_commit: Callable[[StoreTx, list[Transition]], None] | None = None,
    on_abort: Callable[[list[Transition], BaseException], None] | None = None,
) -> SqliteStore:
    """The state store; a worker's (`create=False`) opens only the file its primary has open.
    The hooks record each write's transitions in the audit log (see `SqliteStore.write`)."""
    try:
        return SqliteStore(
            path, on_commit=on_commit, create=create, expect=expect,
            before_commit=before_commit, on_abort=on_abort,
        )  # fmt: skip
    except StoreError as exc:
        raise StartupError(f"paths.state: {exc.message}") from None


def open_state_store(
    config: ServerConfig,
    on_commit: Callable[[list[Transition]], None] | None = None,
    *,
    create: bool = True,
    expect: FileIdentity | None = None,
    before_commit: Callable[[StoreTx, list[Transition]], None] | None = None,
    on_abort: Callable[[list[Transition], BaseException], None] | None = None,
    on_changes: Callable[[int], None] | None = None,
) -> Store:
    """The configured state store: the SQLite file (`open_store`; `create` and `expect` are
    about the file), or the PostgreSQL database every process and server connects to."""
    if config.paths.state is not None:
        return open_store(
            config.paths.state, on_commit, create=create, expect=expect,
            before_commit=before_commit, on_abort=on_abort,
        )  # fmt: skip
    try:
        return PostgresStore(
            state_dsn(config.state), schema=config.state.schema, on_commit=on_commit,
            before_commit=before_commit, on_abort=on_abort, on_changes=on_changes,
            login_grace=config.state.max_staleness,
        )  # fmt: skip
    except StoreError as exc:
        raise StartupError(f"state: {exc.message}") from None


def state_dsn(state: StateSettings) -> str:
    """The PostgreSQL store's DSN (a secret), read; StartupError naming where it should be."""
    assert state.dsn is not None, "the config requires dsn_env or dsn_file with postgres"
    setting = "state.dsn_env" if state.dsn.env is not None else "state.dsn_file"
    try:
        return state.dsn.read()
    except SecretUnavailable as exc:
        raise StartupError(
            f"{setting}: {_missing(state.dsn, exc)}; set it to the state database's libpq "
            "connection string, e.g. postgresql://pgwarden@db.internal/pgwarden?sslmode=verify-full"
        ) from None


def state_file(store: Store) -> FileIdentity | None:
    """The SQLite file a primary opened, which its workers open and no other; None with
    PostgreSQL (every process connects to the database the config names)."""
    return store.watch.identity if isinstance(store, SqliteStore) else None


def discard_new_state(path: Path) -> None:
    """Remove a state file this run created and that no server ever used (the start failed)."""
    for name in (path.name, *(path.name + suffix for suffix in SQLITE_SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(name).unlink()


def audit_replica(config: ServerConfig) -> str:
    """The replica name this server's audit chains carry (`records.chain_path`): `state.replica`
    with a PostgreSQL store, so that replicas' chains can share a directory; "" with SQLite
    (the names of old). StartupError for a name that would take another chain's file."""
    replica = config.state.replica if config.state.backend is StateBackend.POSTGRES else ""
    if replica and (problem := replica_name_problem(replica)) is not None:
        raise StartupError(f"state.replica: {problem} (it names this server's audit chains)")
    return replica


def open_audit(
    settings: AuditSettings, key: bytes, path: Path, clock: Clock, secrets: SecretsToRedact
) -> AuditLog:
    try:
        return open_audit_log(settings, key, path, clock, secrets)
    except AuditUnavailable as exc:
        raise StartupError(
            f"paths.audit_log: cannot continue the audit log {path}: {exc.detail}"
        ) from None


def record_state_created(audit: AuditLog, path: Path | str, *, earlier_life: bool) -> None:
    """`state.created`: where the history of this state store begins (and, with `--new-state`,
    that an earlier one was given up)."""
    if earlier_life:
        log.warning(
            "started with a new, empty state store %s (--new-state): the grants and API tokens "
            "of the earlier one are not in it; the audit log keeps their records", path
        )  # fmt: skip
    try:
        audit.append(StateCreated(str(path), earlier_life))
    except AuditUnavailable as exc:  # the log fails closed on its own: sessions are refused
        log.error("could not record that the state store %s was created: %s", path, exc)


def listen_error(setting: str, address: ListenAddress, exc: OSError) -> StartupError:
    """A listener's bind failed after the check passed (another process was quicker)."""
    return StartupError(f"{setting}: {bind_problem(str(address), exc)}")


def _checked(
    problems: list[str], check: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T | None:
    """`check(*args)`, or None with its problems added to `problems`."""
    try:
        return check(*args, **kwargs)
    except StartupError as exc:
        problems.extend(exc.problems)
        return None


def _open_policy(config: ServerConfig, on_reload: ReloadHook) -> PolicyHolder:
    try:
        return PolicyHolder.open(
            config.paths.policy, on_reload=on_reload,
            people_from_identity=config.identity is not None,  # single sign-on: policy_file.py
        )  # fmt: skip
    except PolicyError as exc:
        raise _policy_error(exc, config) from None


def _server_tls(config: ServerConfig) -> ClientTls | None:
    try:
        return server_tls(config)
    except CertificateError as exc:
        raise StartupError(f"proxy.tls: {exc.message}") from None


def _policy_error(exc: PolicyError, config: ServerConfig) -> StartupError:
    if isinstance(exc, PolicyUnreadable):
        return StartupError(
            f"paths.policy: {_first_problem(exc)}; correct paths.policy in "
            f"{config.source}, or create the policy file there"
        )
    return StartupError(f"paths.policy: {exc}; see: pgwarden policy check {exc.source}")


def _first_problem(exc: ConfigError | PolicyError) -> str:
    return exc.problems[0].message if exc.problems else str(exc)


def _missing(ref: SecretRef, exc: SecretUnavailable) -> str:
    if ref.env is not None:
        state = "is empty" if ref.env in os.environ else "is not set"
        return f"environment variable {ref.env} {state}"
    cause = exc.__cause__
    if isinstance(cause, OSError):
        return f"cannot read {ref.file} ({cause.strerror or cause})"
    return f"the file {ref.file} is empty"


def _set_key(ref: SecretRef, audit_path: Path) -> str:
    """The fix: the key that wrote the existing log, or a new random one for a new log."""
    with contextlib.suppress(OSError):  # an unreadable directory: advise as for a new log
        if log_files(audit_path):
            return f"set it to the key that wrote {audit_path}"
    if ref.env is not None:
        return (
            f"export it with at least {MIN_KEY_BYTES} random bytes, e.g. "
            f'export {ref.env}="$({KEY_COMMAND})"'
        )
    return f"write at least {MIN_KEY_BYTES} random bytes into it, e.g. {KEY_COMMAND} > {ref.file}"
