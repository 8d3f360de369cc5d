"""Fixtures of the web console's HTTP tests: `console` (harness.py) over the API's cast."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.api import policy
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import PolicyBox
from tests.unit.web.harness import ConsoleHarness

__all__ = ["console", "policy"]


@pytest.fixture
def console(tmp_path: Path, policy: PolicyBox, clock: FakeClock) -> Iterator[ConsoleHarness]:
    harness = ConsoleHarness(tmp_path, policy, clock)
    try:
        yield harness
    finally:
        harness.close()
