"""Templates: one autoescaping Jinja2 environment, and the filters the pages share.

Every value printed by a template passes `visible()` (the environment's `finalize`), after which
Jinja escapes it: bidirectional and other invisible format characters in people's text (a reason,
a query) are shown as `<U+202E>`, so a reason cannot be made to read backwards or hide part of
itself, and `<script>` arrives as text. Nothing is marked safe by hand.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from proxy.policy.durations import format_duration

# Unicode "format" characters that reorder or hide text: bidi embeddings, overrides and isolates,
# marks, zero-width joiners and the like, the BOM, and C0/C1 controls but tab and newline.
INVISIBLE: Final = re.compile(
    "[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]"
)


def visible(value: Any) -> Any:
    """`value` with every invisible format character spelled out (`<U+202E>`); None as ''."""
    if value is None:
        return ""
    if isinstance(value, str) and INVISIBLE.search(value):
        return INVISIBLE.sub(lambda m: f"<U+{ord(m.group()):04X}>", value)
    return value


def when(value: datetime | str | None) -> str:
    """`2026-12-07 14:05:00 UTC` for an instant (or its ISO text)."""
    if value is None or value == "":
        return ""
    at = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(seconds: float | timedelta | None) -> str:
    """`1h30m`, `45s`: a duration as the policy writes it, rounded to the second."""
    if seconds is None:
        return ""
    total = seconds.total_seconds() if isinstance(seconds, timedelta) else seconds
    return format_duration(timedelta(seconds=max(0, round(total))))


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("proxy.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,  # a misspelt name fails the test that renders it
        finalize=visible,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, span=span)
    return env


ENVIRONMENT: Final = _environment()


def render(template: str, **values: Any) -> str:
    return ENVIRONMENT.get_template(template).render(**values)
