"""Log lines about floods are rate-limited per kind, and say how many were held back."""

from __future__ import annotations

from proxy.session.quiet_log import QuietLog, held_back_note


class Ticker:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def test_a_flood_logs_a_few_lines_per_window_then_reports_what_it_held_back() -> None:
    ticker = Ticker()
    quiet = QuietLog(ticker, lines=2, window=10.0)
    assert [quiet.admit("refused") for _ in range(5)] == [0, 0, None, None, None]
    assert quiet.admit("throttled") == 0  # another kind has its own window
    ticker.t += 10.0
    assert quiet.admit("refused") == 3
    assert quiet.admit("refused") == 0


def test_the_note_is_empty_when_nothing_was_held_back() -> None:
    assert held_back_note(0) == ""
    assert held_back_note(7) == " (7 more like it not logged)"
