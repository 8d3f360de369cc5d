"""Single sign-on fixtures: a real OpenID provider on loopback (tests/fixtures/idp.py) — `idp`,
one for the whole run, and `private_idp`, a test's own, to change people in and restart — and
the provider's log attached to the report of a failed test that used one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.idp import Idp, idp, private_idp

__all__ = ["idp", "private_idp"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        for name in ("idp", "private_idp"):
            provider = funcargs.get(name)
            if isinstance(provider, Idp) and (log := provider.log_text()):
                report.sections.append((f"OpenID provider log ({name})", log[-4000:]))
    return report
