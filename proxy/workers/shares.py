"""What pgwarden's worker processes divide between them, and what they tell each other.

With `proxy.workers: N`, N processes accept Postgres clients on one port (SO_REUSEPORT; the
kernel spreads new connections between them). The first is the *primary*: it also serves the
HTTP API and /metrics, sweeps grants and sends notifications, and it starts, watches and
restarts the others (`proxy/workers/primary.py`). Every process reads the same policy file and
state store, so logins, revocations and expiry work in each one on its own. What they cannot
share by reading a file is handled here:

- **limits** (`share_limits`): admission caps and failed-login buckets (per source, per user
  and source, per user) are kept per process, so each worker gets 1/N of every cap (at least 1)
  and its buckets hold 1/N of the burst and refill N times slower: the kernel spreads one
  client's connections over the workers, so together they count its failures as one bucket
  would. The whole server never admits more than configured (unless a cap is smaller than N), at
  the price that one source near its cap may be refused slightly before it reaches it.
- **the audit log** (`proxy.audit.records.worker_audit_path`): each worker writes its own MAC
  chain, next to the primary's: `audit.log`, `audit.worker1.log`, ...; `pgwarden audit verify
  --config` checks all.
- **sessions** (`info_to_json`): the API lists and ends sessions of every worker by asking them.
"""

from __future__ import annotations

import typing
from dataclasses import replace
from datetime import datetime

from proxy.config import Limits, ThrottleSettings
from proxy.session.session import SessionInfo


def share_limits(limits: Limits, workers: int) -> Limits:
    """One worker's share of the server's limits (the limits themselves for one worker)."""
    if workers == 1:
        return limits

    def cap(total: int) -> int:
        return max(1, total // workers)

    def bucket(rule: ThrottleSettings) -> ThrottleSettings:
        return ThrottleSettings(cap(rule.burst), rule.refill_every * workers)

    return replace(
        limits,
        max_sessions=cap(limits.max_sessions),
        max_sessions_per_source=cap(limits.max_sessions_per_source),
        max_preauth_connections=cap(limits.max_preauth_connections),
        max_preauth_per_source=cap(limits.max_preauth_per_source),
        failed_logins_per_user=bucket(limits.failed_logins_per_user),
        failed_logins_per_source=bucket(limits.failed_logins_per_source),
        failed_logins_per_user_and_source=bucket(limits.failed_logins_per_user_and_source),
    )


def info_to_json(info: SessionInfo) -> dict[str, object]:
    fields: dict[str, object] = {}
    for name in SessionInfo.__dataclass_fields__:
        value = getattr(info, name)
        fields[name] = value.isoformat() if isinstance(value, datetime) else value
    return fields


def info_from_json(fields: object) -> SessionInfo:
    """A SessionInfo from a worker's answer; ValueError if it is not one."""
    if not isinstance(fields, dict) or set(fields) != set(SessionInfo.__dataclass_fields__):
        raise ValueError("not a session description")
    values = dict(fields)
    for name in ("started_at", "grant_ends_at"):
        values[name] = datetime.fromisoformat(str(values[name]))
    for name, kind in _FIELD_TYPES.items():
        # bool is an int to isinstance: neither may pass for the other here
        if type(values[name]) is not kind:
            raise ValueError(f"session field {name} is not a {kind.__name__}")
    return SessionInfo(**values)


# From the annotations themselves: a compiled SessionInfo (proxy/native.py) has classes there,
# not the strings of `from __future__ import annotations`.
_FIELD_TYPES: dict[str, type] = {
    name: kind if kind in (bool, int, datetime) else str
    for name, kind in typing.get_type_hints(SessionInfo).items()
}
