"""The only place pgwarden reads the time.

Everything that depends on time takes a `Clock`. Wall-clock time (`now`) decides grant windows,
which are instants agreed with people ("until 14:05 UTC"); monotonic time (`monotonic`) measures
durations inside one process (login timeouts, timers) and never jumps. Tests inject a fake clock.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """A source of wall-clock and monotonic time."""

    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences are meaningful."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()


class OffsetClock:
    """`base`'s wall clock moved by `offset`, its monotonic clock as is.

    A replica's change feed sets `offset` to how far the state database's clock is ahead of this
    host's, so that replicas whose hosts disagree by seconds still agree on when a grant ends
    (a host running late would otherwise keep a session past the grant's end)."""

    def __init__(self, base: Clock, offset: timedelta = timedelta(0)) -> None:
        self.base, self.offset = base, offset

    def now(self) -> datetime:
        return self.base.now() + self.offset

    def monotonic(self) -> float:
        return self.base.monotonic()
