"""Durations: one strict grammar for policy, config and command line."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.policy.durations import MAX_DURATION, DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("0h5m", timedelta(minutes=5)),
        ("30d", MAX_DURATION),
    ],
)
def test_valid_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("0s", "must be longer than zero"),
        ("0h0m", "must be longer than zero"),
        ("-5m", "must be positive"),
        ("90", "needs a unit"),
        ("1.5h", "is not a duration"),
        ("30m1h", "largest first"),
        ("1h1h", "is not a duration"),
        ("2H", "is not a duration"),
        (" 2h", "is not a duration"),
        ("2h\n", "is not a duration"),
        ("2 h", "is not a duration"),
        ("1w", "is not a duration"),
        ("PT2H", "is not a duration"),
        ("٣h", "is not a duration"),  # an Arabic-Indic digit is still not ASCII
        ("2026-01-01", "not a date or time"),
        ("2026-01-01 10:00", "not a date or time"),
        ("31d", "longer than the maximum of 30d"),
        ("9999999999d", "is not a duration"),  # more digits than any real duration
        ("999999999d", "longer than the maximum"),
    ],
)
def test_invalid_durations_say_why(text: str, message: str) -> None:
    with pytest.raises(DurationError, match=message):
        parse_duration(text)


def test_a_caller_can_lower_the_maximum() -> None:
    assert parse_duration("5m", maximum=timedelta(minutes=5)) == timedelta(minutes=5)
    with pytest.raises(DurationError, match="longer than the maximum of 5m"):
        parse_duration("301s", maximum=timedelta(minutes=5))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(days=2), "2d"),
        (timedelta(0), "0s"),
        (timedelta(seconds=1, microseconds=600_000), "1s"),
        (-timedelta(minutes=5), "-5m"),
    ],
)
def test_format_for_humans(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@given(st.integers(min_value=1, max_value=int(MAX_DURATION.total_seconds())))
def test_format_then_parse_is_the_identity(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@given(st.text(max_size=20))
def test_parse_accepts_or_raises_duration_error_only(text: str) -> None:
    try:
        value = parse_duration(text)
    except DurationError:
        return
    assert timedelta(0) < value <= MAX_DURATION
