"""Fixtures every unit test folder shares."""

from __future__ import annotations

import pytest

from tests.fixtures.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at `DEFAULT_START`: time moves only when the test says so."""
    return FakeClock()
