"""Per-test outcomes from pytest's junit-xml, and the comparison of two runs of one suite.

A test's outcome is the worst of what its junit entries say: `error` (it broke in setup or
teardown, or the module did not import), `failed`, `skipped` (xfail included, as pytest writes
it), else `passed`. Tests are named `classname::name` as in the XML (`tests.test_pool.TestPool::
test_pool_01`).
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MESSAGE_CHARS = 240  # of a failure's message kept for the report


class Outcome(enum.Enum):
    PASSED = "passed"
    SKIPPED = "skipped"
    FAILED = "failed"
    ERROR = "error"

    @property
    def bad(self) -> bool:
        return self in (Outcome.FAILED, Outcome.ERROR)


_RANK = {Outcome.PASSED: 0, Outcome.SKIPPED: 1, Outcome.FAILED: 2, Outcome.ERROR: 3}


@dataclass(frozen=True)
class TestResult:
    outcome: Outcome
    message: str = ""  # the first line of the failure, error or skip reason
    seconds: float = 0.0


@dataclass
class RunResults:
    """What one run of one suite produced."""

    tests: dict[str, TestResult] = field(default_factory=dict)
    exit_code: int | None = None  # pytest's; None: it never ended by itself
    timed_out: bool = False
    seconds: float = 0.0
    problem: str = ""  # why there is no (complete) result, when there is none
    postgres_version: str = ""

    def counts(self) -> Counter[Outcome]:
        return Counter(result.outcome for result in self.tests.values())


def read_junit(path: Path) -> dict[str, TestResult]:
    """Every test case in a junit-xml file; an empty dict when there is none."""
    if not path.is_file():
        return {}
    root = ET.parse(path).getroot()  # noqa: S314 - a file this run's pytest wrote
    found: dict[str, TestResult] = {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        result = _result_of(case)
        known = found.get(name)
        if known is None or _RANK[result.outcome] > _RANK[known.outcome]:
            found[name] = result
    return found


def _result_of(case: ET.Element) -> TestResult:
    seconds = float(case.get("time") or 0.0)
    for tag, outcome in (
        ("error", Outcome.ERROR),
        ("failure", Outcome.FAILED),
        ("skipped", Outcome.SKIPPED),
    ):
        element = case.find(tag)
        if element is not None:
            return TestResult(outcome, _message(element), seconds)
    return TestResult(Outcome.PASSED, "", seconds)


def _message(element: ET.Element) -> str:
    text = element.get("message") or element.text or ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= MESSAGE_CHARS else first[: MESSAGE_CHARS - 1] + "…"


@dataclass(frozen=True)
class Comparison:
    """Where the run through pgwarden differs from the direct one, test by test."""

    only_through_pgwarden: dict[str, TestResult]  # failed or error there, passed directly
    skipped_through_pgwarden: dict[str, TestResult]  # skipped there, passed directly
    only_direct: dict[str, TestResult]  # failed or error directly, passed through pgwarden
    missing: list[str]  # ran directly, absent through pgwarden (a crash or the wall clock)


def compare(direct: Mapping[str, TestResult], proxied: Mapping[str, TestResult]) -> Comparison:
    only_proxied: dict[str, TestResult] = {}
    skipped: dict[str, TestResult] = {}
    only_direct: dict[str, TestResult] = {}
    missing: list[str] = []
    for name in sorted(direct):
        mine, theirs = direct[name], proxied.get(name)
        if theirs is None:
            missing.append(name)
        elif mine.outcome is Outcome.PASSED and theirs.outcome.bad:
            only_proxied[name] = theirs
        elif mine.outcome is Outcome.PASSED and theirs.outcome is Outcome.SKIPPED:
            skipped[name] = theirs
        elif mine.outcome.bad and theirs.outcome is Outcome.PASSED:
            only_direct[name] = mine
    return Comparison(only_proxied, skipped, only_direct, missing)
