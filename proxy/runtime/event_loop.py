"""The event loop `pgwarden serve` runs on: uvloop when it is installed, else asyncio's own."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine


def run_event_loop(main: Coroutine[object, object, None]) -> None:
    """Run `main` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, imported where it is used
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
