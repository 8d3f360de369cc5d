"""Failed-login throttling (SECURITY.md row 17), with a hand-driven monotonic clock."""

from __future__ import annotations

from proxy.auth.throttle import LoginThrottle, ThrottleRule


class Ticker:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(ticker: Ticker, max_keys: int = 1000) -> LoginThrottle:
    return LoginThrottle(
        ticker,
        per_user=ThrottleRule(burst=3, refill_seconds=10.0),
        per_source=ThrottleRule(burst=5, refill_seconds=1.0),
        max_keys=max_keys,
    )


def test_a_user_is_throttled_after_a_burst_of_failures_and_recovers_with_time() -> None:
    ticker = Ticker()
    throttle = make(ticker)
    for i in range(3):
        assert not throttle.is_throttled("alice", f"10.0.0.{i}")
        throttle.record_failure("alice", f"10.0.0.{i}")
    assert throttle.is_throttled("alice", "10.0.0.99")
    ticker.t += 9.9
    assert throttle.is_throttled("alice", "10.0.0.99")
    ticker.t += 0.2
    assert not throttle.is_throttled("alice", "10.0.0.99")


def test_other_users_stay_unthrottled_when_one_is_attacked_from_many_sources() -> None:
    ticker = Ticker()
    throttle = make(ticker)
    for i in range(50):
        throttle.record_failure("alice", f"10.0.{i}.1")
    assert throttle.is_throttled("alice", "127.0.0.1")
    assert not throttle.is_throttled("bob", "127.0.0.1")


def test_a_source_is_throttled_across_user_names() -> None:
    ticker = Ticker()
    throttle = make(ticker)
    for i in range(5):
        throttle.record_failure(f"user{i}", "192.0.2.1")
    assert throttle.is_throttled("someone-new", "192.0.2.1")
    assert not throttle.is_throttled("someone-new", "192.0.2.2")
    ticker.t += 1.0
    assert not throttle.is_throttled("someone-new", "192.0.2.1")


def test_a_flood_of_random_user_names_keeps_memory_bounded() -> None:
    ticker = Ticker()
    throttle = make(ticker, max_keys=100)
    for i in range(10_000):
        throttle.record_failure(f"random-{i}", "198.51.100.7")
    assert throttle.tracked_keys <= 200
