# ruff: noqa: S603 - pytest and git run with fixed argv lists, never a shell
"""`make compat`: the asyncpg, pg8000 and psycopg2 test suites, directly and through pgwarden.

    .venv/bin/python -m compat.run [--suites asyncpg,pg8000,psycopg2]
                                   [--test-timeout S] [--run-timeout S]
    .venv/bin/python -m compat.run --render .cache/compat/runs/<UTC timestamp>

Fetches and installs what the suites need (compat/toolchain.py), then runs each suite twice, each
time on a fresh PostgreSQL (compat/stack.py): directly, then through a fresh pgwarden with its
default limits. Compares the two runs test by test (compat/outcomes.py) and writes the report
(compat/report.py) to compat/results/<UTC date>.md, and prints it. Each run's junit-xml, pytest
output, pgwarden directory (config, policy, log, audit log) and PostgreSQL log are kept in
.cache/compat/runs/<UTC timestamp>/ for a closer look, with what the report needs besides them
(run.json); `--render` writes that run's report again, say after a rule was added to
compat/causes.py, without running anything.

Bounds: every test by pytest-timeout (`--test-timeout`), every run by a wall clock
(`--run-timeout`: SIGINT, which makes pytest write what it has, then SIGTERM and SIGKILL to its
process group), every pip call and server start by its own timeout. Everything started here is
stopped on exit, Ctrl-C, SIGTERM or failure. Exit status: 0 when every run completed, 1 when a
run timed out or produced no results, 2 when the suites or the servers could not be set up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench.stack import BenchError, stop_process_group
from compat.outcomes import RunResults, read_junit
from compat.report import Report, SuiteRuns, log_problems, render
from compat.stack import fresh_postgres, running_pgwarden
from compat.suites import Endpoint, Suite, select
from compat.toolchain import CACHE, Toolchain, ToolchainError, prepare
from tests.fixtures.postgres import PostgresServer, PostgresUnavailable

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_TEST_TIMEOUT = 120  # seconds for one test (pytest-timeout), in either run
DEFAULT_RUN_TIMEOUT = 1800  # seconds for one run of one suite
INTERRUPT_GRACE = 60.0  # seconds pytest gets after SIGINT to write its junit-xml
KEEP_RUNS = 5  # kept run directories in .cache/compat/runs (about 25 MB each, mostly audit logs)
# The environment a suite inherits: nothing of pgwarden's (no role password, no audit key).
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TERM", "USER", "LOGNAME")


@dataclass(frozen=True)
class Plan:
    suites: tuple[Suite, ...]
    test_timeout: int
    run_timeout: int
    render: Path | None = None  # only write the report of this kept run again


def run_suite(plan: Plan, tools: Toolchain, suite: Suite, path: str, artefacts: Path) -> RunResults:
    """One run of `suite` on a fresh PostgreSQL, directly or through a fresh pgwarden."""
    directory = artefacts / f"{suite.name}-{path}"
    directory.mkdir(parents=True)
    with fresh_postgres() as upstream:
        try:
            if path == "direct":
                results = run_pytest(plan, tools, suite, upstream.endpoint(), directory)
            else:
                pgwarden = running_pgwarden(upstream, directory / "pgwarden", suite.pgwarden_user)
                with pgwarden as endpoint:
                    results = run_pytest(plan, tools, suite, endpoint, directory)
        finally:
            keep_postgres_log(upstream.postgres, directory)
        results.postgres_version = upstream.version
        return results


def run_pytest(
    plan: Plan, tools: Toolchain, suite: Suite, endpoint: Endpoint, directory: Path
) -> RunResults:
    """pytest on the suite's tests, bounded in time; its per-test outcomes from junit-xml."""
    junit, log = directory / "junit.xml", directory / "pytest.log"
    source = tools.sources[suite.name]
    argv = [
        str(tools.pytest), *suite.pytest_args, f"--rootdir={source}",
        "-c", str(source / suite.pytest_config), f"--junitxml={junit}", "-p", "no:cacheprovider",
        f"--timeout={plan.test_timeout}", "-rfE",
    ]  # fmt: skip
    env = {k: os.environ[k] for k in INHERITED if k in os.environ}
    env.update(suite.environment(endpoint))
    print(f"compat: {suite.label} {endpoint.path}: running (log: {log})", flush=True)
    started = time.monotonic()
    results = RunResults()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, cwd=source, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        results.exit_code = proc.wait(plan.run_timeout)
    except subprocess.TimeoutExpired:
        results.timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # pytest writes its junit-xml on the way out
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(INTERRUPT_GRACE)
    finally:
        stop_process_group(proc)
    results.seconds = time.monotonic() - started
    results.tests = read_junit(junit)
    if results.timed_out:
        results.problem = f"stopped by the wall clock after {plan.run_timeout} s"
    elif not results.tests:
        results.problem = f"pytest exited {results.exit_code} without results; see {log}"
    counts = results.counts()
    summary = ", ".join(f"{n} {outcome.value}" for outcome, n in counts.most_common())
    print(
        f"compat: {suite.label} {endpoint.path}: {summary or 'no results'} "
        f"in {results.seconds:.0f} s{f' ({results.problem})' if results.problem else ''}",
        flush=True,
    )
    return results


def keep_postgres_log(pg: PostgresServer, directory: Path) -> None:
    if pg.log_path is not None and pg.log_path.is_file():
        with contextlib.suppress(OSError):
            shutil.copyfile(pg.log_path, directory / "postgres.log")


def code_version() -> str:
    """The commit pgwarden ran from, and whether proxy/ differed from it (read-only git)."""
    root = Path(__file__).resolve().parent.parent
    git = ["git", "--no-optional-locks", "-C", str(root)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30,
            check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "proxy"], capture_output=True, text=True,
            timeout=30, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} with uncommitted changes in proxy/" if dirty else head


def parse_args(argv: Sequence[str] | None) -> Plan:
    parser = argparse.ArgumentParser(
        prog="python -m compat.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--suites", help="comma-separated: asyncpg, pg8000, psycopg2 (all)")
    parser.add_argument(
        "--test-timeout", type=int, default=DEFAULT_TEST_TIMEOUT,
        help=f"seconds per test (default {DEFAULT_TEST_TIMEOUT})",
    )  # fmt: skip
    parser.add_argument(
        "--run-timeout", type=int, default=DEFAULT_RUN_TIMEOUT,
        help=f"seconds per run of a suite (default {DEFAULT_RUN_TIMEOUT})",
    )  # fmt: skip
    parser.add_argument(
        "--render", type=Path, metavar="RUN_DIR",
        help="write the report of a kept run (.cache/compat/runs/...) again; run nothing",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        suites = select(args.suites)
    except ValueError as exc:
        parser.error(str(exc))
    return Plan(suites, args.test_timeout, args.run_timeout, args.render)


def exit_on_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)  # unwinds through every `finally`: everything is stopped


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse_args(argv)
    if plan.render is not None:
        report = load_report(plan.render)
        publish(report, [runs.suite for runs in report.runs])
        return 0
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, exit_on_signal)
    started, clock = datetime.now(UTC), time.monotonic()
    code = code_version()  # before the runs: others may commit while they go
    artefacts = CACHE / "runs" / started.strftime("%Y%m%dT%H%M%SZ")
    prune_runs(artefacts.parent, KEEP_RUNS - 1)
    try:
        tools = prepare()
        runs = []
        for suite in plan.suites:
            direct = run_suite(plan, tools, suite, "direct", artefacts)
            proxied = run_suite(plan, tools, suite, "pgwarden", artefacts)
            log = artefacts / f"{suite.name}-pgwarden" / "pgwarden" / "pgwarden.log"
            runs.append(
                SuiteRuns(suite, tools.drivers[suite.name], direct, proxied, log_problems(log))
            )
    except (ToolchainError, PostgresUnavailable, BenchError) as exc:
        print(f"compat: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit):
        print("compat: interrupted; everything it started is stopped", file=sys.stderr)
        raise
    report = Report(
        started=started, elapsed=time.monotonic() - clock, code=code,
        postgres=postgres_versions(runs), python=sys.version.split()[0],
        plan_test_timeout=plan.test_timeout, plan_run_timeout=plan.run_timeout, runs=tuple(runs),
        artefacts=artefacts,
    )  # fmt: skip
    save_report(report)
    publish(report, plan.suites)
    incomplete = any(r.direct.problem or r.proxied.problem for r in runs)
    return 1 if incomplete else 0


def prune_runs(runs: Path, keep: int) -> None:
    """Remove all but the newest `keep` run directories (their names sort by time)."""
    if not runs.is_dir():
        return
    kept = sorted((d for d in runs.iterdir() if d.is_dir()), reverse=True)
    for old in kept[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def publish(report: Report, suites: Sequence[Suite]) -> None:
    text = render(report)
    path = report_path(report.started, suites)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"written: {path}")


# What the report needs besides the junit-xml and pgwarden's log, kept beside them (run.json).
_RUN_FIELDS = ("exit_code", "timed_out", "seconds", "problem", "postgres_version")


def save_report(report: Report) -> None:
    record = {
        "started": report.started.isoformat(), "elapsed": report.elapsed, "code": report.code,
        "postgres": report.postgres, "python": report.python,
        "test_timeout": report.plan_test_timeout, "run_timeout": report.plan_run_timeout,
        "runs": [
            {"suite": r.suite.name, "driver": r.driver,
             "direct": {k: getattr(r.direct, k) for k in _RUN_FIELDS},
             "pgwarden": {k: getattr(r.proxied, k) for k in _RUN_FIELDS}}
            for r in report.runs
        ],
    }  # fmt: skip
    (report.artefacts / "run.json").write_text(json.dumps(record, indent=2))


def load_report(artefacts: Path) -> Report:
    """The report of a kept run, from its run.json, junit-xml files and pgwarden logs."""
    record = json.loads((artefacts / "run.json").read_text())
    runs = []
    for entry in record["runs"]:
        suite = select(entry["suite"])[0]
        results = []
        for path in ("direct", "pgwarden"):
            run = RunResults(**{k: entry[path][k] for k in _RUN_FIELDS})
            run.tests = read_junit(artefacts / f"{suite.name}-{path}" / "junit.xml")
            results.append(run)
        log = artefacts / f"{suite.name}-pgwarden" / "pgwarden" / "pgwarden.log"
        runs.append(SuiteRuns(suite, entry["driver"], results[0], results[1], log_problems(log)))
    return Report(
        started=datetime.fromisoformat(record["started"]), elapsed=record["elapsed"],
        code=record["code"], postgres=record["postgres"], python=record["python"],
        plan_test_timeout=record["test_timeout"], plan_run_timeout=record["run_timeout"],
        runs=tuple(runs), artefacts=artefacts,
    )  # fmt: skip


def postgres_versions(runs: Sequence[SuiteRuns]) -> str:
    found = {r.postgres_version for runs_ in runs for r in (runs_.direct, runs_.proxied)}
    return ", ".join(sorted(v for v in found if v)) or "unknown"


def report_path(started: datetime, suites: Sequence[Suite]) -> Path:
    """compat/results/<date>.md for all suites, <date>-<suites>.md for a selection."""
    day = started.strftime("%Y-%m-%d")
    names = [suite.name for suite in suites]
    everything = names == [suite.name for suite in select(None)]
    return RESULTS / (f"{day}.md" if everything else f"{day}-{'-'.join(names)}.md")


if __name__ == "__main__":
    sys.exit(main())
