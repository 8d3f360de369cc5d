"""Failed-login throttling that a stranger cannot turn against someone else (SECURITY.md row 17).

Trusted servers slow the guesser, never the account: PostgreSQL's auth_delay delays the answer to
a failed login, OpenSSH's PerSourcePenalties refuses the *address* that misbehaves. pgwarden does
both, and never locks a user out. A failure counts only against what the one who failed controls:

    what happened                                    counts against
    -----------------------------------------------  -----------------------------------------
    CREDENTIAL: wrong password, unknown user or      its source address, its (user, source)
      target, no active grant, grant ended             pair, and the user's alarm (any source)
    PROTOCOL: malformed SCRAM, or the client hung    its source address only: it is no guess
      up or stalled in the middle of the exchange      at anyone's password
    a throttled attempt, a successful login          nothing

`check` refuses an attempt, before any work, when its source or its (user, source) pair has no
failures left. A stranger who knows the name `alice` and hammers pgwarden from his own address
(wrong passwords, broken SCRAM) throttles only himself; alice from a clean address logs in. A
refused attempt spends nothing and restarts no refill, so a client that retries while throttled,
however often, gets in as soon as its bucket has refilled.

The per-user alarm never refuses. Once a user name has failed `burst` times from anywhere (a
guesser spread over many addresses), each further failure for it is answered after
`failure_delay` seconds (auth_delay): each guess holds the guesser's connection, and pgwarden's
pre-auth caps and login timeout bound how many can be held. A correct login is never delayed.

Buckets: a key starts with `burst` tokens and gets one back every `refill_seconds`; a failure
takes one. Attempts admitted together on the last token may all fail and take the bucket below
zero; that debt (at most `burst`) is paid back by the same steady refill, so no failure is
forgotten and no refill ever restarts. Memory is bounded: at most `max_keys` buckets of each kind,
the least recently touched dropped first (a flood of random user names evicts itself).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

# Enough to remember every source and user name of a busy server; ~100 bytes a bucket.
DEFAULT_MAX_KEYS = 100_000
# How long the answer to a failed login waits while its user name is failing from everywhere:
# long enough to make each guess cost a held connection, short enough to stay far inside any
# login timeout (the session also caps it below its own).
DEFAULT_FAILURE_DELAY = 1.0

K = TypeVar("K", bound=Hashable)


class Failure(StrEnum):
    """What kind of failure a login was, which decides what it counts against."""

    CREDENTIAL = "credential"  # a proof was checked (or a mock one) and was wrong: a guess
    PROTOCOL = "protocol"  # the exchange broke or was abandoned: no guess was made


class Throttled(StrEnum):
    """Why `check` refused an attempt."""

    SOURCE = "source"
    USER_AND_SOURCE = "user_and_source"


@dataclass(frozen=True, slots=True)
class ThrottleRule:
    """`burst` failures at once, then one more every `refill_seconds`."""

    burst: int
    refill_seconds: float


# The defaults, as proxy/config.py also states them: a source address may fail 30 times, then
# once every 2 s (many users behind one NAT); one user name from one address 10 times, then once
# every 6 s; a user name failing 10 times from anywhere is under attack.
DEFAULT_PER_SOURCE = ThrottleRule(burst=30, refill_seconds=2.0)
DEFAULT_PER_USER_AND_SOURCE = ThrottleRule(burst=10, refill_seconds=6.0)
DEFAULT_PER_USER = ThrottleRule(burst=10, refill_seconds=6.0)


class _Buckets(Generic[K]):
    """Token buckets keyed by `K`, least recently used first."""

    def __init__(self, rule: ThrottleRule, max_keys: int) -> None:
        self._rule = rule
        self._max_keys = max_keys
        self._tokens: OrderedDict[K, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def tokens(self, key: K, now: float) -> float:
        entry = self._tokens.get(key)
        if entry is None:
            return float(self._rule.burst)
        tokens, at = entry
        refilled = tokens + max(0.0, now - at) / self._rule.refill_seconds
        return min(float(self._rule.burst), refilled)

    def has_token(self, key: K, now: float) -> bool:
        return self.tokens(key, now) >= 1.0

    def take(self, key: K, now: float) -> None:
        """One failure: a token less, down to a debt of at most one burst."""
        left = max(-float(self._rule.burst), self.tokens(key, now) - 1.0)
        self._tokens[key] = (left, now)
        self._tokens.move_to_end(key)
        while len(self._tokens) > self._max_keys:
            self._tokens.popitem(last=False)

    def __len__(self) -> int:
        return len(self._tokens)


class LoginThrottle:
    """Decides whether a login attempt is checked at all, and counts failures by their kind."""

    def __init__(
        self,
        monotonic: Callable[[], float],
        *,
        per_source: ThrottleRule = DEFAULT_PER_SOURCE,
        per_user_and_source: ThrottleRule = DEFAULT_PER_USER_AND_SOURCE,
        per_user: ThrottleRule = DEFAULT_PER_USER,
        failure_delay: float = DEFAULT_FAILURE_DELAY,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._monotonic = monotonic
        self._sources: _Buckets[str] = _Buckets(per_source, max_keys)
        self._pairs: _Buckets[tuple[str, str]] = _Buckets(per_user_and_source, max_keys)
        self._users: _Buckets[str] = _Buckets(per_user, max_keys)
        self._failure_delay = failure_delay

    def check(self, user: str, source: str) -> Throttled | None:
        """Why this attempt must be refused unchecked, or None. Spends nothing either way."""
        now = self._monotonic()
        if not self._sources.has_token(source, now):
            return Throttled.SOURCE
        if not self._pairs.has_token((user, source), now):
            return Throttled.USER_AND_SOURCE
        return None

    def record_failure(self, user: str, source: str, failure: Failure) -> float:
        """Count a failed login; how many seconds to wait before answering it (0: at once)."""
        now = self._monotonic()
        self._sources.take(source, now)
        if failure is Failure.PROTOCOL:
            return 0.0
        self._pairs.take((user, source), now)
        under_attack = not self._users.has_token(user, now)
        self._users.take(user, now)
        return self._failure_delay if under_attack else 0.0

    @property
    def tracked_keys(self) -> int:
        return len(self._sources) + len(self._pairs) + len(self._users)
