"""The throttle's rules (SECURITY.md row 17), as tables of steps on a hand-driven clock.

Row 17: failed logins are throttled per source address and per (user, source) pair, never by
locking an account; a stranger who knows a user name, sending malformed SASL or wrong passwords
from anywhere, must not stop that user's correct login from another address; a throttled attempt
is refused cheaply and does not restart a refill. Each scenario below is one of those sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from proxy.auth.throttle import Failure, LoginThrottle, Throttled, ThrottleRule

CREDENTIAL, PROTOCOL = Failure.CREDENTIAL, Failure.PROTOCOL
SOURCE, PAIR = Throttled.SOURCE, Throttled.USER_AND_SOURCE
DELAY = 1.5
A, B = "192.0.2.1", "192.0.2.2"


@dataclass(frozen=True)
class Fail:
    """A failed login; `delay` is what the throttle must say to wait before answering it."""

    user: str
    source: str
    kind: Failure = CREDENTIAL
    delay: float = 0.0


@dataclass(frozen=True)
class Check:
    """An attempt: `expected` is why it is refused unchecked, or None (it is checked)."""

    user: str
    source: str
    expected: Throttled | None


@dataclass(frozen=True)
class Wait:
    seconds: float


Step = Fail | Check | Wait


class Ticker:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(ticker: Ticker, max_keys: int = 1000) -> LoginThrottle:
    return LoginThrottle(
        ticker,
        per_source=ThrottleRule(burst=5, refill_seconds=1.0),
        per_user_and_source=ThrottleRule(burst=3, refill_seconds=10.0),
        per_user=ThrottleRule(burst=4, refill_seconds=10.0),
        failure_delay=DELAY,
        max_keys=max_keys,
    )


def times(count: int, *steps: Step) -> list[Step]:
    return [step for _ in range(count) for step in steps]


SCENARIOS: dict[str, list[Step]] = {
    "wrong passwords throttle that user from that address only": [
        *times(3, Fail("alice", A)),
        Check("alice", A, PAIR),
        Check("alice", B, None),
        Check("bob", A, None),
    ],
    "malformed SCRAM counts against the source alone": [
        *times(5, Fail("alice", A, PROTOCOL)),
        Check("anyone", A, SOURCE),
        Check("alice", B, None),
        Wait(5),
        Check("alice", A, None),  # the (alice, A) pair was never charged
    ],
    "a stranger's protocol violations never stop alice elsewhere": [
        *times(100, Fail("alice", A, PROTOCOL)),
        Check("alice", B, None),
    ],
    "a stranger's wrong passwords never stop alice elsewhere": [
        *[Fail("alice", f"198.51.100.{i}", delay=DELAY if i >= 4 else 0.0) for i in range(20)],
        Check("alice", B, None),
    ],
    "retrying every second while throttled neither spends nor restarts the refill": [
        *times(3, Fail("alice", A)),
        *times(9, Check("alice", A, PAIR), Wait(1)),
        Wait(1),
        Check("alice", A, None),  # 10 s after the failures: one token back, retries or not
    ],
    "a refilled token admits one more failure, then the pair is throttled again": [
        *times(3, Fail("alice", A)),
        Wait(10),
        Check("alice", A, None),
        Fail("alice", A),
        Check("alice", A, PAIR),
    ],
    "many user names from one address exhaust the address": [
        *[Fail(f"user{i}", A) for i in range(5)],
        Check("someone-new", A, SOURCE),
        Check("someone-new", B, None),
        Wait(1),
        Check("someone-new", A, None),
    ],
    "a user failing from many addresses is delayed, never refused": [
        *[Fail("alice", f"203.0.113.{i}") for i in range(4)],
        Fail("alice", "203.0.113.9", delay=DELAY),
        Check("alice", B, None),
        Fail("bob", B),  # other users are not delayed
    ],
    "protocol failures never delay, even for a user under attack": [
        *[Fail("alice", f"203.0.113.{i}") for i in range(4)],
        Fail("alice", "203.0.113.9", delay=DELAY),
        Fail("alice", B, PROTOCOL),
    ],
    "failures admitted together leave a bounded debt, repaid at the steady rate": [
        # All checked at once; the pair's debt stops at one burst (3). The user's alarm (burst
        # 4) is empty after four, so the answers to the rest are delayed.
        *times(4, Fail("alice", A)),
        *times(6, Fail("alice", A, delay=DELAY)),
        Wait(39),
        Check("alice", A, PAIR),  # -3 + 3.9 tokens
        Wait(1),
        Check("alice", A, None),
    ],
    "the user's alarm refills too": [
        *[Fail("alice", f"203.0.113.{i}") for i in range(4)],
        Wait(10),
        Fail("alice", B),
        Fail("alice", B, delay=DELAY),
    ],
}


@pytest.mark.parametrize("steps", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_throttle_rules(steps: list[Step]) -> None:
    ticker = Ticker()
    throttle = make(ticker)
    for index, step in enumerate(steps):
        if isinstance(step, Wait):
            ticker.t += step.seconds
        elif isinstance(step, Check):
            assert throttle.check(step.user, step.source) is step.expected, (index, step)
        else:
            delay = throttle.record_failure(step.user, step.source, step.kind)
            assert delay == step.delay, (index, step)


def test_memory_stays_bounded_under_a_flood_of_random_user_names() -> None:
    ticker = Ticker()
    throttle = make(ticker, max_keys=100)
    for i in range(10_000):
        throttle.record_failure(f"random-{i}", f"198.51.100.{i % 250}", CREDENTIAL)
    assert throttle.tracked_keys <= 300
