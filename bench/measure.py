# ruff: noqa: S603 - the bench runs local tools with fixed argv lists, never a shell
"""One measurement: a pgbench run or a bulk COPY through one path, and the proxy's CPU time.

pgbench's own report gives transactions, TPS and average latency; a run counts as failed when
pgbench exits non-zero, reports failed transactions, or says a client aborted. The bulk case has
psql run `\\copy (SELECT ...) to '/dev/null'` with `\\timing on`, so the time is the COPY's alone,
without the login, and checks the row count psql reports (a relay that drops data must not look
fast); MB/s counts the COPY payload (the text rows), 1 MB = 10^6 bytes.

The proxy's CPU time (user + system, all threads) comes from /proc/<pid>/stat before and after
the run; its resolution is one clock tick (10 ms), small next to runs of seconds.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.stack import Endpoint

RUN_TIMEOUT_MARGIN = 60.0  # seconds beyond a run's own duration before it is killed
COPY_TIMEOUT = 600.0  # seconds for one bulk COPY
COPY_FILLER = 90  # bytes of 'x' per row: rows of ~100 bytes, between narrow and wide
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MB = 1_000_000


@dataclass(frozen=True)
class Case:
    """A pgbench case (`args`) or, with `copy_mb`, a bulk COPY of about that many MB; a `tls`
    case runs through the TLS paths only, the others through the plain paths only."""

    name: str
    args: tuple[str, ...] = ()
    copy_mb: int = 0
    tls: bool = False

    @property
    def unit(self) -> str:
        return "MB" if self.copy_mb else "tx"


@dataclass(frozen=True)
class Measurement:
    """What one run through one path gave; `rate` is TPS or MB/s."""

    case: str
    path: str
    rep: int
    ok: bool
    rate: float | None = None
    latency_ms: float | None = None
    units: float = 0.0  # transactions, or MB
    proxy_cpu_s: float | None = None
    problem: str = ""

    @property
    def proxy_cpu_us_per_unit(self) -> float | None:
        if self.proxy_cpu_s is None or not self.units:
            return None
        return self.proxy_cpu_s * 1e6 / self.units


def measure(case: Case, endpoint: Endpoint, rep: int, duration: int) -> Measurement:
    """Run `case` once through `endpoint`, charging the proxy's CPU time to it."""
    before = cpu_seconds(endpoint.pid)
    if case.copy_mb:
        result = run_copy(case, endpoint, rep)
    else:
        result = run_pgbench(case, endpoint, rep, duration)
    after = cpu_seconds(endpoint.pid)
    if before is None or after is None:
        return result
    return dataclasses.replace(result, proxy_cpu_s=after - before)


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a live process and its live children (pgwarden's worker processes), in
    seconds; None without a process (or once it is gone)."""
    fields = _stat(pid)
    if pid is None or fields is None or fields[0] == "Z":
        return None
    total = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        child = _stat(int(stat.parent.name))
        if child is not None and child[1] == str(pid) and child[0] != "Z":  # field 4: ppid
            total += int(child[11]) + int(child[12])
    return total / CLOCK_TICKS


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a child that exited stays a zombie until it is waited for)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _stat(pid: int | None) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; None without such a process."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'


# --- pgbench ---------------------------------------------------------------------------------

_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
_FAILED = re.compile(r"number of failed transactions: (\d+)")
_LATENCY = re.compile(r"latency average = ([\d.]+) ms")
_TPS = re.compile(r"^tps = ([\d.]+)", re.MULTILINE)


def run_pgbench(case: Case, endpoint: Endpoint, rep: int, duration: int) -> Measurement:
    # -n: no vacuum first (the role does not own the tables; init vacuumed them).
    argv = ["pgbench", "-n", "-T", str(duration), *case.args]
    try:
        done = subprocess.run(
            argv, env=endpoint.env(), capture_output=True, text=True, check=False,
            timeout=duration + RUN_TIMEOUT_MARGIN,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return Measurement(case.name, endpoint.name, rep, ok=False, problem="pgbench timed out")
    return parse_pgbench(case, endpoint.name, rep, done)


def parse_pgbench(
    case: Case, path: str, rep: int, done: subprocess.CompletedProcess[str]
) -> Measurement:
    """pgbench's report as a Measurement; anything abnormal goes into `problem`."""
    stdout, stderr, returncode = done.stdout, done.stderr, done.returncode
    processed, failed = _number(_PROCESSED, stdout), _number(_FAILED, stdout)
    tps, latency = _number(_TPS, stdout), _number(_LATENCY, stdout)
    problems = [line for line in stderr.splitlines() if "error" in line or "abort" in line]
    if returncode != 0:
        problems.insert(0, f"pgbench exited {returncode}")
    if failed:
        problems.insert(0, f"{failed:.0f} failed transactions")
    if tps is None or processed is None:
        problems.append("no tps in pgbench's report")
    return Measurement(
        case.name, path, rep, ok=not problems, rate=tps, latency_ms=latency,
        units=processed or 0.0, problem="; ".join(problems[:5])[:1000],
    )  # fmt: skip


def _number(pattern: re.Pattern[str], text: str) -> float | None:
    match = pattern.search(text)
    return float(match.group(1)) if match else None


# --- bulk COPY -------------------------------------------------------------------------------

_TIMING = re.compile(r"^Time: ([\d.]+) ms", re.MULTILINE)
_COPIED = re.compile(r"^COPY (\d+)$", re.MULTILINE)


def copy_rows(target_mb: int) -> int:
    """How many rows make about `target_mb` of COPY text."""
    return max(1, target_mb * MB // (COPY_FILLER + 9))


def copy_bytes(rows: int) -> int:
    """The exact COPY text size of `copy_query(rows)`: 'id<TAB>x...x<LF>' per row."""
    digits, low, width = 0, 1, 1
    while low <= rows:
        high = min(rows, low * 10 - 1)
        digits += (high - low + 1) * width
        low, width = low * 10, width + 1
    return digits + rows * (COPY_FILLER + 2)


def copy_query(rows: int) -> str:
    return f"SELECT g, repeat('x', {COPY_FILLER}) FROM generate_series(1, {rows}) AS g"  # noqa: S608


def run_copy(case: Case, endpoint: Endpoint, rep: int) -> Measurement:
    rows = copy_rows(case.copy_mb)
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", "\\timing on",
            "-c", f"\\copy ({copy_query(rows)}) to '/dev/null'"]  # fmt: skip
    try:
        done = subprocess.run(
            argv, env=endpoint.env(), capture_output=True, text=True, check=False,
            timeout=COPY_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return Measurement(case.name, endpoint.name, rep, ok=False, problem="COPY timed out")
    timing, copied = _number(_TIMING, done.stdout), _number(_COPIED, done.stdout)
    if done.returncode != 0 or timing is None:
        problem = f"psql exited {done.returncode}: {done.stderr.strip()[-500:]}"
        return Measurement(case.name, endpoint.name, rep, ok=False, problem=problem)
    if copied != rows:
        problem = f"COPY returned {copied} rows, expected {rows}"
        return Measurement(case.name, endpoint.name, rep, ok=False, problem=problem)
    megabytes = copy_bytes(rows) / MB
    seconds = max(timing, 0.001) / 1000
    return Measurement(
        case.name, endpoint.name, rep, ok=True, rate=megabytes / seconds, units=megabytes
    )
