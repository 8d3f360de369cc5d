"""The Markdown report: one table of counts, then per suite what differs through pgwarden.

For each suite: the tests that fail (or error) through pgwarden but pass directly, grouped by
their cause as compat/causes.py knows it, each with the first line of what pytest said; the
tests skipped through pgwarden that pass directly (a skip can hide a difference), grouped the
same way; the reverse cases (failing directly, passing through pgwarden: flaky tests or ones
that depend on timing); the tests that never ran through pgwarden; and the warnings and errors
in pgwarden's log, grouped by message.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from compat.causes import RULES, Cause, cause_of
from compat.outcomes import Outcome, RunResults, TestResult, compare
from compat.suites import Suite

MAX_LOG_MESSAGES = 15  # distinct warning/error messages of pgwarden's log shown per suite
_LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (.*)$")
_IDS = re.compile(r"\b[0-9a-f]{16}\b|\b\d+(\.\d+)?\b")


@dataclass(frozen=True)
class SuiteRuns:
    suite: Suite
    driver: str  # how the driver was installed
    direct: RunResults
    proxied: RunResults
    log_messages: tuple[tuple[str, int], ...]  # pgwarden's warnings and errors, with counts


@dataclass(frozen=True)
class Report:
    started: datetime
    elapsed: float
    code: str
    postgres: str
    python: str
    plan_test_timeout: int
    plan_run_timeout: int
    runs: tuple[SuiteRuns, ...]
    artefacts: Path


def log_problems(path: Path) -> tuple[tuple[str, int], ...]:
    """pgwarden's WARNING/ERROR/CRITICAL lines, ids and numbers masked, most frequent first."""
    if not path.is_file():
        return ()
    counts: Counter[str] = Counter()
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            if match := _LOG_LINE.match(line.rstrip()):
                counts[f"{match.group(1)} {_IDS.sub('N', match.group(2))}"] += 1
    return tuple(counts.most_common())


def render(report: Report) -> str:
    minutes = report.elapsed / 60
    lines = [
        f"# Client test suites, directly and through pgwarden: {report.started:%Y-%m-%d}",
        "",
        f"`make compat` started {report.started:%Y-%m-%d %H:%M} UTC and took {minutes:.0f} min: "
        f"pgwarden {report.code}, PostgreSQL {report.postgres}, Python {report.python}. Each "
        "suite ran twice, each time on a fresh PostgreSQL: directly, as a superuser role, and "
        "through a fresh pgwarden with its default limits and audit settings, as a pgwarden user "
        "with a grant whose access level maps to that role (compat/README.md). Bounds: "
        f"{report.plan_test_timeout} s per test, {report.plan_run_timeout} s per run.",
        "",
        "| suite | path | passed | failed | errors | skipped | total | time | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for runs in report.runs:
        lines.append(_count_row(f"{runs.suite.label}", "direct", runs.direct))
        lines.append(_count_row("", "pgwarden", runs.proxied))
    lines.append("")
    lines.append("Drivers: " + "; ".join(f"{r.suite.name}: {r.driver}" for r in report.runs) + ".")
    for runs in report.runs:
        lines.extend(["", *_suite_section(runs)])
    lines.extend(_unseen_causes(report.runs))
    lines.extend(["", f"Run artefacts (junit-xml, logs): `{_shown(report.artefacts)}`", ""])
    return "\n".join(lines)


def _unseen_causes(all_runs: tuple[SuiteRuns, ...]) -> list[str]:
    """The known causes (rules) of the suites run that this run did not show: intermittent
    ones come and go from run to run, and one that never shows again may be gone from pgwarden."""
    seen: set[Cause] = set()
    for runs in all_runs:
        diff = compare(runs.direct.tests, runs.proxied.tests)
        for test, result in {**diff.only_through_pgwarden, **diff.skipped_through_pgwarden}.items():
            seen.add(cause_of(runs.suite.name, test, result.message))
    names = {runs.suite.name for runs in all_runs}
    unseen = [r for r in RULES if r.cause not in seen and (r.suite is None or r.suite in names)]
    if not unseen:
        return []
    lines = [
        "",
        "## Known causes this run did not show",
        "",
        "Intermittent ones come and go from run to run; one that never shows again may be gone "
        "from pgwarden (compat/causes.py):",
        "",
    ]
    for rule in unseen:
        where = " ".join(f"`{p}`" for p in (rule.test, rule.said) if p)
        lines.append(f"- **{rule.cause.category}** ({rule.suite or 'any suite'}: {where}): "
                     f"{_line(rule.cause.why)}.")  # fmt: skip
    return lines


def _count_row(label: str, path: str, run: RunResults) -> str:
    counts = run.counts()
    cells = [counts[o] for o in (Outcome.PASSED, Outcome.FAILED, Outcome.ERROR, Outcome.SKIPPED)]
    note = run.problem or ("" if run.exit_code in (0, 1) else f"pytest exit {run.exit_code}")
    return (
        f"| {label} | {path} | {' | '.join(str(c) for c in cells)} | {sum(counts.values())} "
        f"| {run.seconds:.0f} s | {_cell(note)} |"
    )


def _suite_section(runs: SuiteRuns) -> list[str]:
    diff = compare(runs.direct.tests, runs.proxied.tests)
    lines = [f"## {runs.suite.label}", ""]
    lines.extend(
        _by_cause(
            runs.suite.name,
            "Failing through pgwarden, passing directly",
            diff.only_through_pgwarden,
        )
    )
    lines.extend(
        _by_cause(
            runs.suite.name,
            "Skipped through pgwarden, passing directly",
            diff.skipped_through_pgwarden,
        )
    )
    lines.extend(
        _listed(
            "Failing directly, passing through pgwarden (flaky, or timing)",
            [(test, _said(result)) for test, result in diff.only_direct.items()],
        )
    )
    lines.extend(_listed("Not run through pgwarden", [(test, "") for test in diff.missing]))
    total = sum(count for _, count in runs.log_messages)
    lines.append(f"pgwarden's log: {total} warnings and errors" + (":" if total else "."))
    shown = runs.log_messages[:MAX_LOG_MESSAGES]
    lines.extend(f"- {count} times: {_line(message)}" for message, count in shown)
    if len(runs.log_messages) > MAX_LOG_MESSAGES:
        lines.append(f"- ... and {len(runs.log_messages) - MAX_LOG_MESSAGES} more kinds")
    return lines


def _by_cause(suite: str, title: str, tests: dict[str, TestResult]) -> list[str]:
    """The tests grouped by their cause (compat/causes.py), the largest group first."""
    if not tests:
        return [f"{title}: none.", ""]
    groups: dict[Cause, list[tuple[str, TestResult]]] = {}
    for test, result in tests.items():
        groups.setdefault(cause_of(suite, test, result.message), []).append((test, result))
    lines = [f"{title}: {len(tests)}.", ""]
    for cause, members in sorted(groups.items(), key=lambda item: -len(item[1])):
        lines.append(f"**{cause.category}** ({len(members)}): {_line(cause.why)}.")
        lines.append("")
        lines.extend(f"- `{test}`: {_line(_said(result))}" for test, result in members)
        lines.append("")
    return lines


def _listed(title: str, tests: list[tuple[str, str]]) -> list[str]:
    if not tests:
        return [f"{title}: none.", ""]
    lines = [f"{title}: {len(tests)}.", ""]
    lines.extend(f"- `{test}`" + (f": {_line(said)}" if said else "") for test, said in tests[:50])
    if len(tests) > 50:
        lines.append(f"- ... and {len(tests) - 50} more")
    lines.append("")
    return lines


def _said(result: TestResult) -> str:
    return f"{result.outcome.value}: {result.message}"


def _shown(path: Path) -> str:
    """`path` relative to the repository when it lies inside it."""
    root = Path(__file__).resolve().parent.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _line(text: str) -> str:
    """Text on one line (a list item)."""
    return " ".join(text.split())


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return _line(text).replace("|", "\\|")
