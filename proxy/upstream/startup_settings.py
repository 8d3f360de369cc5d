"""Which client startup settings go upstream, and which pgwarden refuses (SECURITY.md row 22).

A client's run-time settings reach the database as PostgreSQL itself would take them, except the
few that choose who logs in where, that an access level may rely on the database's default for,
or that only take effect at connection start: those are refused before any password is asked
for (`refused_startup_setting`, used by the handshake), and dropped again on the way out
(`allowed_startup_parameters`, the last line of defence). Names compare as PostgreSQL compares
them (`fold`: ASCII letters only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "REFUSED_STARTUP_SETTINGS",
    "StartupParameters",
    "allowed_startup_parameters",
    "fold",
    "refused_startup_setting",
]

# Settings a client may not ask for at startup, and why (SECURITY.md row 22). Every other setting
# goes upstream as the client asked: the database applies its own checks (an unknown name, a bad
# value, a superuser-only setting is its FATAL, passed on), and a setting the role could SET one
# statement later is no more dangerous at startup. Refused: what chooses who logs in where, what
# pgwarden's access levels may rely on the database's defaults for, and the settings that only
# take effect at connection start (they are not run-time settings a session could SET).
REFUSED_STARTUP_SETTINGS: Final[Mapping[str, str]] = MappingProxyType({
    "user": "pgwarden chooses the database role from your grant",
    "database": "pgwarden chooses the database from your grant",
    "role": "pgwarden logs in as the role your grant's access level maps to",
    "session_authorization": "pgwarden logs in as the role your grant's access level maps to",
    "replication": "replication connections are not supported through pgwarden",
    "default_transaction_read_only": "an access level may rely on the database's default",
    "post_auth_delay": "it is not a run-time setting",
    "ignore_system_indexes": "it is not a run-time setting",
    "log_connections": "it is not a run-time setting",
    "log_disconnections": "it is not a run-time setting",
    "jit_debugging_support": "it is not a run-time setting",
    "jit_profiling_support": "it is not a run-time setting",
})  # fmt: skip

StartupParameters = tuple[tuple[str, str], ...]


def refused_startup_setting(settings: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """The first setting pgwarden refuses to pass on, with why; None if it passes them all."""
    for name, _value in settings:
        reason = REFUSED_STARTUP_SETTINGS.get(fold(name))
        if reason is not None:
            return name, reason
    return None


def allowed_startup_parameters(params: Iterable[tuple[str, str]]) -> StartupParameters:
    """The settings that may go upstream: refused names, raw `options`, protocol extensions,
    names that differ only in case from an earlier one, empty names and NUL are dropped. The
    session refuses a login that asks for a refused setting before it gets here; this is the
    last line of defence."""
    seen: set[str] = set()
    allowed: list[tuple[str, str]] = []
    for name, value in params:
        folded = fold(name)
        if not name or folded in REFUSED_STARTUP_SETTINGS or folded in seen:
            continue
        if folded == "options" or folded.startswith("_pq_."):
            continue  # `options` reaches us read into settings; `_pq_.` are protocol extensions
        if "\0" in name or "\0" in value:
            continue
        seen.add(folded)
        allowed.append((name, value))
    return tuple(allowed)


def fold(name: str) -> str:
    # Postgres compares setting names folding ASCII letters only (guc_name_compare); every
    # login folds each of its settings' names, and nearly all are ASCII: one C call then.
    if name.isascii():
        return name.lower()
    return "".join(char.lower() if char.isascii() else char for char in name)
