"""Durations as people write them: `90s`, `30m`, `2h`, `1d`, `1h30m`.

One grammar for the policy, the server config and the command line (`--duration 2h`): one or more
`<whole number><unit>` parts, units `d`, `h`, `m`, `s`, largest first, each at most once. Nothing
else is a duration: not a bare number (is `90` seconds or minutes?), not a fraction, not a
negative or zero length, not a date. A duration above `MAX_DURATION` (or a caller's lower cap) is
refused so that a typo like `30d` for `30m` cannot hand out a month of access.
"""

from __future__ import annotations

import re
from datetime import timedelta

MAX_DURATION = timedelta(days=30)
_UNITS: tuple[tuple[str, int], ...] = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
# Nine digits per part bounds the arithmetic long before timedelta could overflow.
_PATTERN = re.compile(
    r"(?:(?P<d>[0-9]{1,9})d)?(?:(?P<h>[0-9]{1,9})h)?(?:(?P<m>[0-9]{1,9})m)?(?:(?P<s>[0-9]{1,9})s)?"
)
_LOOKS_LIKE_DATE = re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}")
_EXAMPLES = "e.g. 90s, 30m, 2h, 1d or 1h30m"


class DurationError(ValueError):
    """Text that is not an acceptable duration; the message says why and what would be."""


def parse_duration(text: str, *, maximum: timedelta = MAX_DURATION) -> timedelta:
    """The duration `text` names, strictly positive and at most `maximum`."""
    match = _PATTERN.fullmatch(text) if text else None
    if match is None or not any(match.groupdict().values()):
        raise DurationError(_explain(text))
    seconds = sum(int(match[unit] or 0) * size for unit, size in _UNITS)
    if seconds == 0:
        raise DurationError("must be longer than zero")
    if seconds > maximum.total_seconds():
        raise DurationError(f"{text} is longer than the maximum of {format_duration(maximum)}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """`value` in the same notation, e.g. `1h30m`; whole seconds (a fraction is dropped)."""
    if value < timedelta(0):
        return "-" + format_duration(-value)
    remaining = value // timedelta(seconds=1)
    parts: list[str] = []
    for unit, size in _UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _explain(text: str) -> str:
    """Why `text` is not a duration, as specific as we can cheaply be."""
    shown = repr(text[:40])
    if not text.strip():
        return f"is empty; write a duration, {_EXAMPLES}"
    if text.lstrip().startswith("-"):
        return f"must be positive, got {shown}"
    if text.strip().isdigit():
        return f"needs a unit: {shown} is ambiguous; write {_EXAMPLES}"
    if _LOOKS_LIKE_DATE.match(text.strip()):
        return f"must be a duration, not a date or time ({shown}); write {_EXAMPLES}"
    return f"is not a duration ({shown}); write {_EXAMPLES} (units d, h, m, s, largest first)"
