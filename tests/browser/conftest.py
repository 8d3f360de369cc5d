"""The browser fixtures (tests/fixtures/browser.py), and what a failed browser test leaves behind:
a screenshot of each browser it had open, with the page's text and console errors in the report."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.fixtures.browser import browser, browser_factory, failure_evidence

__all__ = ["browser", "browser_factory"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """While the failed test's browsers are still open (teardown has not run), take evidence."""
    report = yield
    if report.failed and report.when != "teardown":
        report.sections.extend(failure_evidence(item))
    return report
