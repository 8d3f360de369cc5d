"""The browser fixtures (tests/fixtures/browser.py), and what a failed browser test leaves behind:
a screenshot of each browser it had open, with the page's text and console errors in the report."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.fixtures.browser import browser, browser_factory, failure_evidence
from tests.fixtures.console import served_console
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.served import Served

__all__ = ["browser", "browser_factory"]


@pytest.fixture(scope="module")
def served(
    deployment: PgwardenDeployment,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Served]:
    """A `pgwarden serve` of the test deployment for one module's console tests (a module with
    other needs, single sign-on say, defines its own)."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    with served_console(deployment, tmp_path_factory, name) as running:
        yield running


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """While the failed test's browsers are still open (teardown has not run), take evidence."""
    report = yield
    if report.failed and report.when != "teardown":
        report.sections.extend(failure_evidence(item))
    return report
