"""Log lines about floods, rate-limited: refused connections and throttled logins.

Each refusal is counted in a metric, but a log line per refusal would let a flood of connections
write the log as fast as it can connect. `QuietLog` lets through at most `LINES_PER_WINDOW` lines
of each kind per `WINDOW_SECONDS`, counts the rest, and says how many it held back in the next
line it lets through, so the log still shows that a flood happened, and roughly how big it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Enough to see who is being refused; a flood shows up as one line per window with its count.
LINES_PER_WINDOW = 5
WINDOW_SECONDS = 10.0


@dataclass(slots=True)
class _Window:
    started: float
    written: int = 0
    held_back: int = 0


class QuietLog:
    """Decides, per kind of event, whether this one is logged."""

    def __init__(
        self,
        monotonic: Callable[[], float],
        lines: int = LINES_PER_WINDOW,
        window: float = WINDOW_SECONDS,
    ) -> None:
        self._monotonic = monotonic
        self._lines = lines
        self._window = window
        self._windows: dict[str, _Window] = {}  # kinds are a small fixed set (code, not input)

    def admit(self, kind: str) -> int | None:
        """None: do not log this event. Otherwise log it, adding how many were held back since
        the last line of this kind (0: none)."""
        now = self._monotonic()
        window = self._windows.get(kind)
        if window is None or now - window.started >= self._window:
            held_back = window.held_back if window is not None else 0
            window = self._windows[kind] = _Window(now, held_back=held_back)
        if window.written >= self._lines:
            window.held_back += 1
            return None
        window.written += 1
        held_back, window.held_back = window.held_back, 0
        return held_back


def held_back_note(count: int) -> str:
    """The suffix of a line that follows held-back ones."""
    return f" ({count} more like it not logged)" if count else ""
