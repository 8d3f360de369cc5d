"""Admission control: how many connections may wait in login and how many sessions may run.

Three stages, each with a global cap and a per-source-address cap: *pre-auth* (accepted, not yet
logged in; short-lived, capped so that a slowloris cannot starve real logins), *live* (logged in
and relaying), and *refusing*: a connection over a cap is not dropped at once but told why, as
Postgres does (answer its SSLRequest, read its startup packet, then FATAL 53300), so a client
shows `too many connections from ...` instead of a broken TLS negotiation. That courtesy is
itself bounded: beyond the refusing caps a connection is closed without a word.

A connection holds a pre-auth slot from accept until login ends, then a live slot until it closes
(or a refusing slot until it has been told). Pure bookkeeping: the server asks, and on refusal
gets a `Refusal` saying which cap it hit, for the client's message and the metric.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

from proxy.config import (
    DEFAULT_MAX_PREAUTH_CONNECTIONS,
    DEFAULT_MAX_PREAUTH_PER_SOURCE,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_SESSIONS_PER_SOURCE,
)

# Connections being told they are over a cap. Each is a small task holding at most one startup
# packet (10000 bytes) and, with TLS, one handshake, for at most REFUSAL_TIMEOUT (handshake.py):
# cheap, but a flood past every cap must not make them unbounded. Per source, so one flooding
# address cannot take the courtesy from every other.
MAX_REFUSING = 128
MAX_REFUSING_PER_SOURCE = 16


class Stage(StrEnum):
    PREAUTH = "preauth"
    LIVE = "live"
    REFUSING = "refusing"


class Cap(StrEnum):
    """Which cap refused a connection: the `reason` of pgwarden_connections_refused_total."""

    PREAUTH = "preauth"
    PREAUTH_PER_SOURCE = "preauth_per_source"
    SESSIONS = "sessions"
    SESSIONS_PER_SOURCE = "sessions_per_source"
    REFUSING = "refusing"
    REFUSING_PER_SOURCE = "refusing_per_source"


_CAPS = {
    Stage.PREAUTH: (Cap.PREAUTH, Cap.PREAUTH_PER_SOURCE),
    Stage.LIVE: (Cap.SESSIONS, Cap.SESSIONS_PER_SOURCE),
    Stage.REFUSING: (Cap.REFUSING, Cap.REFUSING_PER_SOURCE),
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A slot was not given: which cap, and its value in this process."""

    cap: Cap
    limit: int

    @property
    def per_source(self) -> bool:
        return self.cap.endswith("_per_source")

    def message(self, source: str) -> str:
        """What the client is told (Postgres: "sorry, too many clients already")."""
        what = "sessions" if self.cap in (Cap.SESSIONS, Cap.SESSIONS_PER_SOURCE) else "connections"
        where = f" from {source}" if self.per_source else ""
        return f"pgwarden: too many {what}{where} (limit {self.limit})"


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_preauth: int = DEFAULT_MAX_PREAUTH_CONNECTIONS
    max_preauth_per_source: int = DEFAULT_MAX_PREAUTH_PER_SOURCE
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_sessions_per_source: int = DEFAULT_MAX_SESSIONS_PER_SOURCE
    max_refusing: int = MAX_REFUSING
    max_refusing_per_source: int = MAX_REFUSING_PER_SOURCE


class Admission:
    """Slot counters per stage, globally and per source address."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self._caps = {
            Stage.PREAUTH: (limits.max_preauth, limits.max_preauth_per_source),
            Stage.LIVE: (limits.max_sessions, limits.max_sessions_per_source),
            Stage.REFUSING: (limits.max_refusing, limits.max_refusing_per_source),
        }
        self._by_source: dict[Stage, Counter[str]] = {stage: Counter() for stage in Stage}
        self._total: Counter[Stage] = Counter()

    def admit(self, stage: Stage, source: str) -> Refusal | None:
        """Take a slot for `source` in `stage`; the cap that refuses it, or None when taken."""
        total_cap, per_source_cap = self._caps[stage]
        total_name, per_source_name = _CAPS[stage]
        if self._by_source[stage][source] >= per_source_cap:
            return Refusal(per_source_name, per_source_cap)
        if self._total[stage] >= total_cap:
            return Refusal(total_name, total_cap)
        self._total[stage] += 1
        self._by_source[stage][source] += 1
        return None

    def release(self, stage: Stage, source: str) -> None:
        counts = self._by_source[stage]
        if counts[source] <= 0:
            raise RuntimeError(f"released a {stage} slot that {source} did not hold")
        counts[source] -= 1
        if counts[source] == 0:
            del counts[source]  # the map stays as small as the set of sources connected now
        self._total[stage] -= 1

    def count(self, stage: Stage, source: str | None = None) -> int:
        return self._total[stage] if source is None else self._by_source[stage][source]
