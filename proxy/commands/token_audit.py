"""The token commands' audit trail: a token is recorded before it exists, or is not made.

`pgwarden token create|revoke` run on the server host as their own processes, beside (or
without) a running server, so they cannot append to the server's chain: a chain has one writer.
They write their own, `audit.commands.jsonl` beside `paths.audit_log` (the same key; `audit
verify --config` checks it with the others), one command at a time under an exclusive lock on
`<chain>.lock`. As for the lifecycle's records (`runtime/auditing.py`), the record is written
ahead of the state-store commit (with `audit.fsync: always`, once it is on disk); a record that
cannot be written refuses the command, and nothing changes in the store; a `lifecycle.outcome`
record after the commit says whether it took effect.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
from collections.abc import Iterator
from pathlib import Path

from proxy.audit import AuditLog, AuditUnavailable
from proxy.audit.events import AuditEvent, LifecycleOutcome
from proxy.audit.records import commands_audit_path
from proxy.clock import SYSTEM_CLOCK
from proxy.config import FsyncPolicy, ServerConfig
from proxy.runtime.auditing import SecretsToRedact
from proxy.runtime.startup import StartupError, audit_key, audit_replica, open_audit

# How long a command waits for its record's fsync (`audit.fsync: always`) before it gives up.
DURABLE_TIMEOUT = 10.0


def os_user() -> str:
    """Who ran the command, as the host knows them (for the record's `by`)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "unknown"


@contextlib.contextmanager
def recorded_ahead(config: ServerConfig, event: AuditEvent) -> Iterator[None]:
    """Write `event` to the commands' chain, then run the block (the store change); its outcome
    follows. StartupError (exit 2) if the record cannot be written: the block does not run."""
    path = commands_audit_path(config.paths.audit_log, audit_replica(config))
    key = audit_key(config.audit.hmac_key, config.paths.audit_log)
    with _locked(path), _opened(config, key, path) as log:
        try:
            seq = log.append(event)
            if config.audit.fsync is FsyncPolicy.ALWAYS:
                log.durable(seq).result(DURABLE_TIMEOUT)
        except (AuditUnavailable, TimeoutError) as exc:
            raise StartupError(
                f"paths.audit_log: the audit log {path} cannot be written ({_why(exc)}); "
                "nothing was changed"
            ) from None
        try:
            yield
        except BaseException as exc:
            _outcome(log, seq, committed=False, error=str(exc) or type(exc).__name__)
            raise
        _outcome(log, seq, committed=True, error="")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        lock = path.with_name(path.name + ".lock").open("a")
    except OSError as exc:
        raise StartupError(f"paths.audit_log: cannot open {path}.lock: {exc.strerror}") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another token command: it takes a moment
        yield


@contextlib.contextmanager
def _opened(config: ServerConfig, key: bytes, path: Path) -> Iterator[AuditLog]:
    try:
        log = open_audit(config.audit, key, path, SYSTEM_CLOCK, SecretsToRedact())
    except StartupError as exc:
        problems = (f"{problem}; nothing was changed" for problem in exc.problems)
        raise StartupError(*problems) from None
    try:
        yield log
    finally:
        log.close()


def _outcome(log: AuditLog, seq: int, *, committed: bool, error: str) -> None:
    with contextlib.suppress(AuditUnavailable):  # recorded ahead; `audit verify` reports it
        log.append(LifecycleOutcome(seq, seq, committed, error))


def _why(exc: BaseException) -> str:
    if isinstance(exc, AuditUnavailable):
        return exc.detail or exc.message
    return "its fsync did not finish in time"
