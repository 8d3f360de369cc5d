# ruff: noqa: S603 - the bench runs local tools with fixed argv lists, never a shell
"""Medians of the repetitions, ratios between paths, the printed table and the JSON record."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.measure import Case, Measurement
from bench.tls import TLS_SUFFIX
from proxy import native
from tests.fixtures.postgres import PostgresServer

DIRECT, PGBOUNCER = "direct", "pgbouncer"  # the baselines; a TLS case's have TLS_SUFFIX


@dataclass(frozen=True)
class Row:
    """One (case, path): medians over its successful runs, and ratios of its rate."""

    case: str
    path: str
    rate_unit: str  # "TPS" or "MB/s"
    rate: float | None
    latency_ms: float | None
    vs_direct: float | None
    vs_pgbouncer: float | None
    proxy_cpu_us: float | None  # per transaction, or per MB for COPY
    cpu_unit: str
    runs: int
    failed: int


def summarize(
    cases: Sequence[Case], paths: Sequence[str], results: Sequence[Measurement]
) -> list[Row]:
    rows: list[Row] = []
    for case in cases:
        mine = [m for m in results if m.case == case.name]
        rates = {path: _median(m.rate for m in mine if m.path == path and m.ok) for path in paths}
        ran = [path for path in paths if any(m.path == path for m in mine)]
        rows.extend(_row(case, path, mine, rates) for path in ran)
    return rows


def _row(case: Case, path: str, mine: list[Measurement], rates: dict[str, float | None]) -> Row:
    runs = [m for m in mine if m.path == path]
    good = [m for m in runs if m.ok]
    rate = rates[path]
    suffix = TLS_SUFFIX if case.tls else ""  # TLS paths compare with TLS baselines
    direct, pgbouncer = rates.get(DIRECT + suffix), rates.get(PGBOUNCER + suffix)
    return Row(
        case=case.name, path=path, rate_unit="MB/s" if case.copy_mb else "TPS", rate=rate,
        latency_ms=_median(m.latency_ms for m in good),
        vs_direct=_ratio(rate, direct), vs_pgbouncer=_ratio(rate, pgbouncer),
        proxy_cpu_us=_median(m.proxy_cpu_us_per_unit for m in good), cpu_unit=case.unit,
        runs=len(runs), failed=len(runs) - len(good),
    )  # fmt: skip


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


# --- the table -------------------------------------------------------------------------------

HEADER = ("case", "path", "rate", "lat ms", "vs direct", "vs pgbouncer", "proxy CPU", "failed")


def table(rows: Sequence[Row]) -> str:
    lines = [tuple(_cells(row)) for row in rows]
    widths = [max(len(cells[i]) for cells in [HEADER, *lines]) for i in range(len(HEADER))]
    out = [_line(HEADER, widths), _line(tuple("-" * w for w in widths), widths)]
    previous = ""
    for row, cells in zip(rows, lines, strict=True):
        shown = cells if row.case != previous else ("", *cells[1:])
        out.append(_line(shown, widths))
        previous = row.case
    return "\n".join(out)


def _cells(row: Row) -> list[str]:
    cpu = "" if row.proxy_cpu_us is None else f"{row.proxy_cpu_us:,.1f} µs/{row.cpu_unit}"
    return [
        row.case, row.path,
        "n/a" if row.rate is None else f"{row.rate:,.0f} {row.rate_unit}",
        "" if row.latency_ms is None else f"{row.latency_ms:.3f}",
        _fmt_ratio(row.vs_direct), _fmt_ratio(row.vs_pgbouncer), cpu,
        f"{row.failed}/{row.runs}" if row.failed else "",
    ]  # fmt: skip


def _fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    left = {0, 1}  # case and path read left to right; numbers align right
    parts = [
        c.ljust(w) if i in left else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(parts).rstrip()


# --- the machine and the JSON record ---------------------------------------------------------


def machine_info(pg: PostgresServer) -> dict[str, Any]:
    """What the numbers depend on, recorded beside them."""
    with pg.connect() as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": row[0] if row else None,
        "pgbench": _first_line(["pgbench", "--version"]),
        "pgbouncer": _first_line(["pgbouncer", "--version"]),
        "uvloop": _uvloop(),
        "hot_path": native.describe(),  # pgwarden's, but for the "-pure" paths (stack.py)
        "commit": _first_line(["git", "rev-parse", "--short", "HEAD"]),
    }


def cpu_busy_fraction(interval: float = 1.0) -> float | None:
    """How busy all CPUs were over `interval` seconds (0..1), from /proc/stat; None off Linux.

    Sampled before the bench starts anything and after it stopped everything, this is the load of
    *other* work on the machine, which skews every number here: the report warns about it.
    """
    first = _cpu_times()
    time.sleep(interval)
    second = _cpu_times()
    if first is None or second is None:
        return None
    total = sum(second) - sum(first)
    idle = (second[3] + second[4]) - (first[3] + first[4])  # idle + iowait
    return (total - idle) / total if total else None


def _cpu_times() -> list[int] | None:
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return [int(v) for v in line.split()[1:9]]  # user nice system idle iowait irq softirq steal


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _uvloop() -> str:
    """pgwarden runs on uvloop when it imports in this interpreter (`run_event_loop`)."""
    try:
        return f"on ({importlib.metadata.version('uvloop')})"
    except importlib.metadata.PackageNotFoundError:
        return "off"


def _first_line(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else None


def write_json(
    directory: Path, started: datetime, record: dict[str, Any], rows: Sequence[Row],
    results: Sequence[Measurement],
) -> Path:  # fmt: skip
    """bench/results/<UTC timestamp>.json, written whole or not at all."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{started.astimezone(UTC):%Y%m%dT%H%M%SZ}.json"
    document = {
        **record,
        "started": started.isoformat(timespec="seconds"),
        "argv": sys.argv,
        "rows": [dataclasses.asdict(row) for row in rows],
        "runs": [{**dataclasses.asdict(m), "proxy_cpu_us_per_unit": m.proxy_cpu_us_per_unit}
                 for m in results],
    }  # fmt: skip
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    temporary.replace(path)
    return path
