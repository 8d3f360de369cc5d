"""Human output: aligned tables, times in UTC with a relative hint, text made safe for terminals.

Times are shown as `14:05:00 UTC` (with the date when it is not today) and a hint relative to
now: `in 55m`, `3m ago`. Everything that came from other people (reasons, comments, names) goes
through `clean()` first, so that no escape sequence in someone's reason can rewrite an
approver's terminal — the server refuses control characters too; this is the second line.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from proxy.clock import SYSTEM_CLOCK
from proxy.policy.durations import format_duration

MAX_CELL = 48  # longer cells (reasons) are cut in tables; `pgwarden show` has the whole text


def now() -> datetime:
    return SYSTEM_CLOCK.now()


def clean(value: object) -> str:
    """`value` as one line of printable text (control and format characters become `?`)."""
    text = "" if value is None else str(value)
    return "".join(
        "?" if unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} else ch for ch in text
    )


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def clock_time(at: datetime, reference: datetime) -> str:
    """`14:05:00 UTC`, with the date in front when it is not `reference`'s day."""
    at = at.astimezone(UTC)
    if at.date() == reference.astimezone(UTC).date():
        return f"{at:%H:%M:%S} UTC"
    return f"{at:%Y-%m-%d %H:%M:%S} UTC"


def relative(at: datetime, reference: datetime) -> str:
    """`in 55m`, `3m ago`, `now`."""
    delta = at - reference
    if abs(delta) < timedelta(seconds=1):
        return "now"
    text = humane(abs(delta))
    return f"in {text}" if delta > timedelta(0) else f"{text} ago"


def humane(span: timedelta) -> str:
    """A span rounded to what a person cares about: `45s`, `55m`, `2h5m`, `3d4h`."""
    seconds = round(span.total_seconds())
    if seconds < 90:
        return f"{seconds}s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)}m"
    if seconds < 48 * 3600:
        return format_duration(timedelta(minutes=round(seconds / 60)))
    return format_duration(timedelta(hours=round(seconds / 3600)))


def when(text: object, reference: datetime | None = None) -> str:
    """An ISO time from the API as `14:05:00 UTC (in 55m)`; `-` when there is none."""
    at = parse_time(text)
    if at is None:
        return "-"
    reference = reference or now()
    return f"{clock_time(at, reference)} ({relative(at, reference)})"


def short_time(text: object, reference: datetime | None = None) -> str:
    """An ISO time as `HH:MM:SS` (today) or `MM-DD HH:MM` (another day), for table cells."""
    at = parse_time(text)
    if at is None:
        return "-"
    at, reference = at.astimezone(UTC), (reference or now()).astimezone(UTC)
    return f"{at:%H:%M:%S}" if at.date() == reference.date() else f"{at:%m-%d %H:%M}"


def cut(text: str, width: int = MAX_CELL) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns aligned on the widest cell, two spaces apart; cells cleaned and cut."""
    cells = [[cut(clean(c)) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(headers), *cells]
    ]
    return "\n".join(lines)


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """`name   value` lines, names aligned."""
    width = max(len(name) for name, _ in pairs)
    return "\n".join(f"{name.ljust(width)}  {clean(value)}" for name, value in pairs)
