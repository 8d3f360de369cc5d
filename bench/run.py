"""`make bench`: pgbench through direct Postgres, pgbouncer and pgwarden, interleaved; medians.

    .venv/bin/python -m bench.run [--quick] [--reps N] [--duration S] [--copy-mb MB]
                                  [--cases "-S -c8,prepared"]

Brings up the stack (bench/stack.py), warms each path up, then for every case runs each
repetition through every path in turn (direct, pgbouncer, pgwarden, direct, ...), so machine drift
hits each path alike. Prints one table of medians and writes it, with every run and the machine,
to bench/results/<UTC timestamp>.json. Every run is bounded in time; everything started here is
stopped on exit, Ctrl-C, SIGTERM or failure. Problems seen under load (failed runs, a proxy
that died, warnings and errors in pgwarden's log) are printed and recorded, not hidden.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.measure import Case, Measurement, measure, process_alive
from bench.report import Row, cpu_busy_fraction, machine_info, summarize, table, write_json
from bench.stack import BenchError, Endpoint, bench_stack, make_workdir, tail

RESULTS = Path(__file__).resolve().parent / "results"
MAX_LOG_PROBLEMS = 30  # lines of pgwarden's log kept in the report
BUSY_WARNING = 0.15  # CPU share used by other work, before or after the bench, worth a warning


@dataclass(frozen=True)
class Plan:
    reps: int  # repetitions of each case through each path
    duration: int  # seconds per pgbench run
    warmup: int  # seconds of `-S -c8` per path before measuring
    copy_mb: int  # size of the bulk COPY
    scale: int  # pgbench -i -s
    only: tuple[str, ...] = ()  # run only the cases whose names contain one of these


FULL = Plan(reps=3, duration=10, warmup=3, copy_mb=500, scale=10)
QUICK = Plan(reps=1, duration=3, warmup=1, copy_mb=100, scale=10)


def cases(plan: Plan) -> tuple[Case, ...]:
    """Select-only everywhere: the proxy's cost, not the database's, is what varies."""
    every = (
        Case("-S -c1", ("-S", "-c", "1", "-j", "1")),
        Case("-S -c8", ("-S", "-c", "8", "-j", "2")),
        Case("-S -c32", ("-S", "-c", "32", "-j", "2")),
        Case("-S -M extended -c8", ("-S", "-M", "extended", "-c", "8", "-j", "2")),
        Case("-S -M prepared -c8", ("-S", "-M", "prepared", "-c", "8", "-j", "2")),
        Case("-S -C -c8", ("-S", "-C", "-c", "8", "-j", "2")),
        Case(f"COPY {plan.copy_mb} MB", copy_mb=plan.copy_mb),
        # TLS on every hop (bench/tls.py), through the `-tls` paths.
        Case("-S -c8 tls", ("-S", "-c", "8", "-j", "2"), tls=True),
        Case("-S -M prepared -c8 tls", ("-S", "-M", "prepared", "-c", "8", "-j", "2"), tls=True),
        Case("-S -C -c8 tls", ("-S", "-C", "-c", "8", "-j", "2"), tls=True),
    )
    return tuple(c for c in every if not plan.only or any(part in c.name for part in plan.only))


def runs_through(case: Case, endpoint: Endpoint) -> bool:
    """TLS cases through the TLS paths, the others through the plain ones; some paths run only
    some cases."""
    return case.tls == endpoint.tls and (not endpoint.cases or case.name in endpoint.cases)


def run_cases(plan: Plan, endpoints: Sequence[Endpoint], problems: list[str]) -> list[Measurement]:
    """Every case, `plan.reps` rounds, each round through every live path in turn."""
    live = list(endpoints)
    results: list[Measurement] = []
    for case in cases(plan):
        for rep in range(plan.reps):
            for endpoint in [e for e in live if runs_through(case, e)]:
                result = measure(case, endpoint, rep, plan.duration)
                results.append(result)
                print(progress(result), flush=True)
                if endpoint.pid is not None and not process_alive(endpoint.pid):
                    problems.append(f"{endpoint.name} died during {case.name} (rep {rep + 1})")
                    live.remove(endpoint)
    return results


def warm_up(plan: Plan, endpoints: Sequence[Endpoint], problems: list[str]) -> None:
    """Fill caches and let each path settle; results are discarded unless they failed."""
    warmup = Case("warm-up", ("-S", "-c", "8", "-j", "2"))
    for endpoint in [e for e in endpoints if any(runs_through(c, e) for c in cases(plan))]:
        result = measure(warmup, endpoint, 0, plan.warmup)
        if not result.ok:
            problems.append(f"warm-up through {endpoint.name}: {result.problem}")


def progress(m: Measurement) -> str:
    rate = "failed" if m.rate is None else f"{m.rate:,.0f}"
    flag = "" if m.ok else f"  PROBLEM: {m.problem}"
    return f"  {m.case:<24} {m.path:<20} rep {m.rep + 1}: {rate}{flag}"


_LOG_PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback|Error:")


def log_problems(endpoints: Sequence[Endpoint]) -> list[str]:
    """Warnings, errors and tracebacks in the proxies' logs (pgwarden's format and pgbouncer's)."""
    found: list[str] = []
    for endpoint in endpoints:
        if endpoint.log is None or not endpoint.log.exists():
            continue
        with endpoint.log.open(encoding="utf-8", errors="replace") as log:
            lines = [line.rstrip() for line in log if _LOG_PROBLEM.search(line)]
        found.extend(f"{endpoint.name}: {line}" for line in lines[:MAX_LOG_PROBLEMS])
        if len(lines) > MAX_LOG_PROBLEMS:
            found.append(f"{endpoint.name}: ... {len(lines) - MAX_LOG_PROBLEMS} more such lines")
    return found


def dead_proxy_logs(endpoints: Sequence[Endpoint]) -> dict[str, str]:
    """The end of the log of each proxy that is no longer running."""
    return {
        e.name: tail(e.log, 4000)
        for e in endpoints
        if e.pid is not None and e.log is not None and not process_alive(e.pid)
    }


def parse_args(argv: Sequence[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under 2 minutes)")
    parser.add_argument("--reps", type=int, help="repetitions of each case through each path")
    parser.add_argument("--duration", type=int, help="seconds per pgbench run")
    parser.add_argument("--copy-mb", type=int, help="size of the bulk COPY in MB")
    parser.add_argument(
        "--cases", help="only the cases whose names contain one of these (comma-separated)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    only = tuple(part.strip() for part in args.cases.split(",")) if args.cases else None
    overrides = {
        "reps": args.reps, "duration": args.duration, "copy_mb": args.copy_mb, "only": only,
    }  # fmt: skip
    return replace(plan, **{k: v for k, v in overrides.items() if v is not None})


def exit_on_signal(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)  # unwinds through every `finally`: the stack is torn down


@dataclass
class Collected:
    """Everything measured while the stack was up."""

    paths: list[str]
    machine: dict[str, Any]
    results: list[Measurement]
    problems: list[str]
    dead_proxy_logs: dict[str, str]


def collect(plan: Plan, workdir: Path) -> Collected:
    """Bring the stack up, warm up, run every case interleaved, read the logs; tear it down."""
    problems: list[str] = []
    selected = cases(plan)
    plain, tls = any(not c.tls for c in selected), any(c.tls for c in selected)
    with bench_stack(workdir, plan.scale, plain=plain, tls=tls) as stack:
        paths = [e.name for e in stack.endpoints]
        print(f"bench: {plan}; paths: {', '.join(paths)}", flush=True)
        machine = machine_info(stack.postgres)
        warm_up(plan, stack.endpoints, problems)
        results = run_cases(plan, stack.endpoints, problems)
        problems.extend(log_problems(stack.endpoints))
        return Collected(paths, machine, results, problems, dead_proxy_logs(stack.endpoints))


def main(argv: Sequence[str] | None = None) -> int:
    plan = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, exit_on_signal)
    started, clock = datetime.now().astimezone(), time.monotonic()
    busy_before = cpu_busy_fraction()
    workdir = make_workdir()
    try:
        got = collect(plan, workdir)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit):
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    busy = {"before": busy_before, "after": cpu_busy_fraction()}
    rows = summarize(cases(plan), got.paths, got.results)
    audit = (
        "pgwarden-noaudit = no per-query records; "
        "pgwarden-pool = upstream_pool on (new-connection case only); "
        "-w2 = two worker processes (proxy.workers: 2; CPU counts both); "
        "-tls = TLS client->proxy and proxy->PostgreSQL, sslmode=require (tls cases only)"
    )
    record: dict[str, Any] = {
        "plan": plan.__dict__, "machine": got.machine, "other_cpu_load": busy, "audit": audit,
        "problems": got.problems, "logs_of_dead_proxies": got.dead_proxy_logs,
        "elapsed_s": round(time.monotonic() - clock, 1),
    }  # fmt: skip
    path = write_json(RESULTS, started, record, rows, got.results)
    print(report_text(rows, got.machine, audit, got.problems, path))
    if warning := busy_warning(busy):
        print(warning)
    return 1 if got.problems else 0


def busy_warning(busy: dict[str, float | None]) -> str | None:
    """A warning when other work kept the CPUs busy: the numbers then measure the neighbours too."""
    worst = max((v for v in busy.values() if v is not None), default=0.0)
    if worst < BUSY_WARNING:
        return None
    return (
        f"WARNING: other processes kept the CPUs {worst:.0%} busy (sampled before and after the "
        "bench): treat these numbers as rough, and rerun on a quiet machine"
    )


def report_text(
    rows: Sequence[Row], machine: dict[str, Any], audit: str, problems: list[str], path: Path
) -> str:
    lines = [
        "",
        f"machine: {machine['nproc']} x {machine['cpu_model']}; Python {machine['python']}; "
        f"PostgreSQL {machine['postgres']}; {machine['pgbouncer']}; uvloop {machine['uvloop']}; "
        f"pgwarden's hot path {machine.get('hot_path', 'pure Python')}",
        "medians; ratios compare rates (TPS or MB/s); proxy CPU = the proxy process's user+system",
        "",
        table(rows),
        "",
        f"audit: {audit}",
        *(["", "problems:", *(f"  {p}" for p in problems)] if problems else []),
        f"written: {path}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
