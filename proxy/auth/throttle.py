"""Brute-force throttling of failed logins, per user name and per source address.

Each key (a user name, a source address) has a token bucket of failures: every failed login spends
a token, tokens come back at a steady rate, and a key with an empty bucket is *throttled*. A
throttled login is not delayed (that would hold a pre-auth slot); the session runs the same mock
SCRAM exchange as for an unknown user and answers the same 28P01, so an attacker learns nothing,
and other users' logins are untouched.

Memory is bounded: at most `max_keys` buckets are kept; the least recently touched go first (a
flood of random user names evicts itself, not the buckets that matter).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Enough to remember every source and user name of a busy server; ~100 bytes a bucket.
DEFAULT_MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class ThrottleRule:
    """`burst` failures at once, then one more every `refill_seconds`."""

    burst: int
    refill_seconds: float


class _Buckets:
    """Token buckets keyed by string, least recently used first."""

    def __init__(self, rule: ThrottleRule, max_keys: int) -> None:
        self._rule = rule
        self._max_keys = max_keys
        self._tokens: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def tokens(self, key: str, now: float) -> float:
        entry = self._tokens.get(key)
        if entry is None:
            return float(self._rule.burst)
        tokens, at = entry
        refilled = tokens + max(0.0, now - at) / self._rule.refill_seconds
        return min(float(self._rule.burst), refilled)

    def spend(self, key: str, now: float) -> None:
        left = max(0.0, self.tokens(key, now) - 1.0)
        self._tokens[key] = (left, now)
        self._tokens.move_to_end(key)
        while len(self._tokens) > self._max_keys:
            self._tokens.popitem(last=False)

    def __len__(self) -> int:
        return len(self._tokens)


class LoginThrottle:
    """Decides whether a login attempt may be checked at all, and records failures."""

    def __init__(
        self,
        monotonic: Callable[[], float],
        per_user: ThrottleRule = ThrottleRule(burst=10, refill_seconds=6.0),
        per_source: ThrottleRule = ThrottleRule(burst=30, refill_seconds=2.0),
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._monotonic = monotonic
        self._users = _Buckets(per_user, max_keys)
        self._sources = _Buckets(per_source, max_keys)

    def is_throttled(self, user: str, source: str) -> bool:
        """True when either the user name or the source has run out of failed attempts."""
        now = self._monotonic()
        return self._users.tokens(user, now) < 1.0 or self._sources.tokens(source, now) < 1.0

    def record_failure(self, user: str, source: str) -> None:
        now = self._monotonic()
        self._users.spend(user, now)
        self._sources.spend(source, now)

    @property
    def tracked_keys(self) -> int:
        return len(self._users) + len(self._sources)
