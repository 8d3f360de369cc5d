"""Admission control: how many connections may wait in login and how many sessions may run.

Two stages, each with a global cap and a per-source-address cap: *pre-auth* (accepted, not yet
logged in; short-lived, capped tightly so that a slowloris cannot starve real logins) and *live*
(logged in and relaying). A connection holds a pre-auth slot from accept until login ends, then a
live slot until it closes. Pure bookkeeping: the server asks, and tells the client why on refusal.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    PREAUTH = "preauth"
    LIVE = "live"


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_preauth: int = 200
    max_preauth_per_source: int = 20
    max_sessions: int = 1000
    max_sessions_per_source: int = 50


class Admission:
    """Slot counters per stage, globally and per source address."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self._caps = {
            Stage.PREAUTH: (limits.max_preauth, limits.max_preauth_per_source),
            Stage.LIVE: (limits.max_sessions, limits.max_sessions_per_source),
        }
        self._by_source: dict[Stage, Counter[str]] = {stage: Counter() for stage in Stage}
        self._total: Counter[Stage] = Counter()

    def try_acquire(self, stage: Stage, source: str) -> bool:
        """Take a slot for `source` in `stage`; False when a cap is reached."""
        total_cap, per_source_cap = self._caps[stage]
        if self._total[stage] >= total_cap or self._by_source[stage][source] >= per_source_cap:
            return False
        self._total[stage] += 1
        self._by_source[stage][source] += 1
        return True

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
