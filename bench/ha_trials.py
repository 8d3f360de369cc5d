"""`make ha-trials`: revocation across three replicas, measured; then a state-database outage.

    .venv/bin/python -m bench.ha_trials [--trials 50] [--failovers 10] [--outage 60]

Brings up, on loopback only, the test harness's pieces: a throwaway PostgreSQL as the upstream
(the `orders` database), a second one for the state store alone (tests/fixtures/state_cluster.py),
and three `pgwarden serve` replicas a, b, c on it (tests/fixtures/replicas.py).

**Trials.** Each issues a read-only grant, logs a psycopg client in through one replica (c, a, b
in turn; the credential issued there, since a login elsewhere the moment it is issued races the
announcement: tests/integration/replicas/test_faults.py) and revokes the grant through another
(a, b, c in turn), then measures, from the moment the revoke API call returned: (a) the client's
FATAL (its socket turning readable; then the error is read and checked: SQLSTATE 57P01 and the
revocation's text), (b) the backend gone from the upstream's pg_stat_activity (polled every
5 ms). Prints p50 / p99 / max of each, and the revoke call's own time (nearest rank: with 50
trials p99 is the maximum). A FATAL can arrive before the API's answer does (the session's
replica saw the commit first): such a latency is negative, and reported as it is.

**Leader failover** (`--failovers N`): the leader (the replica whose `pgwarden_leader` is 1) is
killed with SIGKILL N times; the time until another replica leads is printed (p50, max), and the
killed one is started again each time.

**Outage** (`--outage S`, 0 to skip). One long session through each replica, one short one
(a grant ending mid-outage) through each, then the state cluster is stopped (`pg_ctl stop -m
fast`) for S seconds and started again. Every second: does each long session answer a query,
does a new login through each replica succeed (the refusal's SQLSTATE and text if not), does an
API write (a new request) succeed (its HTTP status), and are the short sessions ended on time.
After the restart: how long until logins and writes work again, and whether a revocation on a
reaches a session on c. Printed as a table, one line per second where anything changed.

Every wait is bounded; everything started here is stopped on exit, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg

from tests.fixtures.pg_state import new_schema_name
from tests.fixtures.pgwarden import TARGET_DB, PgwardenDeployment
from tests.fixtures.postgres import PostgresServer, postgres_server
from tests.fixtures.replicas import NAMES, Credential, Replica, Replicas, running_replicas
from tests.fixtures.state_cluster import StateCluster, state_cluster

BOUND = 10.0  # seconds a trial waits for the FATAL and for the backend to go
POLL = 0.005  # seconds between looks at pg_stat_activity
ADMIN_SHUTDOWN = "57P01"
REVOKED = "was revoked by carol: trial"
RECOVERY_SECONDS = 20  # seconds observed after the state database is back
SHORT_GRANT_SECONDS = 20  # the short sessions' grants end this long after the outage begins


@dataclass(frozen=True)
class Trial:
    session_on: str
    revoke_on: str
    api: float  # seconds the revoke call took
    fatal: float | None  # seconds from its return to the client's FATAL; None: none in BOUND
    gone: float | None  # seconds from its return to the backend's exit; None: not in BOUND
    error: str  # what the client was told: "SQLSTATE: message"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def trial(replicas: Replicas, watcher: psycopg.Connection[Any], index: int) -> Trial:
    session_on, revoke_on = NAMES[(index + 2) % 3], NAMES[index % 3]
    credential = replicas.grant(via=(revoke_on, NAMES[(index + 1) % 3], session_on))
    with replicas[session_on].connect(credential) as session:
        session.execute("SELECT 1")
        pid = session.info.backend_pid
        arrived: list[float] = []
        waiter = threading.Thread(target=_await_readable, args=(session, arrived), daemon=True)
        waiter.start()
        started = time.monotonic()
        status, body = replicas.revoke(credential.request_id, revoke_on, reason="trial")
        returned = time.monotonic()
        assert status == 200, body
        gone_at = _poll_gone(watcher, pid, returned)
        waiter.join(BOUND)
        return Trial(
            session_on, revoke_on, returned - started,
            arrived[0] - returned if arrived else None,
            None if gone_at is None else gone_at - returned, _error_of(session),
        )  # fmt: skip


def _await_readable(session: psycopg.Connection[Any], arrived: list[float]) -> None:
    readable, _, _ = select.select([session.fileno()], [], [], BOUND + 2)
    if readable:
        arrived.append(time.monotonic())


def _poll_gone(watcher: psycopg.Connection[Any], pid: int, since: float) -> float | None:
    for _ in range(int(BOUND / POLL)):
        if watcher.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            if time.monotonic() - since > BOUND:
                return None
            time.sleep(POLL)
            continue
        return time.monotonic()
    return None


def _error_of(session: psycopg.Connection[Any]) -> str:
    try:
        session.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"{exc.sqlstate}: {str(exc).strip()}"
    return "no error: the session still answers"


def report_trials(trials: Sequence[Trial]) -> int:
    """Print the latencies; the number of trials that went wrong."""
    print(f"\nrevoke on one replica -> session on another ends ({len(trials)} trials)")
    print(f"{'':34} {'p50':>9} {'p99':>9} {'max':>9} {'min':>9}")
    rows = (
        ("revoke API call", [t.api for t in trials]),
        ("client FATAL (from the call's return)", [t.fatal for t in trials]),
        ("backend gone (from the call's return)", [t.gone for t in trials]),
    )
    for label, sample in rows:
        seen = [s for s in sample if s is not None]
        if seen:
            cells = [percentile(seen, 50), percentile(seen, 99), max(seen), min(seen)]
            print(f"{label:34} " + " ".join(f"{1000 * c:7.1f}ms" for c in cells))
        if len(seen) < len(sample):
            print(f"  {len(sample) - len(seen)} trials: not within {BOUND:.0f} s")
    wrong = [t for t in trials if not _right(t)]
    for t in wrong:
        print(f"  WRONG: session on {t.session_on}, revoked on {t.revoke_on}: {t.error}")
    print(f"mean revoke call {1000 * statistics.fmean(t.api for t in trials):.1f} ms; "
          f"{len(wrong)} trials wrong")  # fmt: skip
    return len(wrong)


def _right(t: Trial) -> bool:
    told = t.error.startswith(f"{ADMIN_SHUTDOWN}: ") and REVOKED in t.error
    return told and t.fatal is not None and t.gone is not None


# -- the outage -------------------------------------------------------------------------------


SLOW = 0.5  # seconds: a probe slower than this shows its time


@dataclass
class Second:
    """What was seen at one second of the outage scenario: a short cell per replica and probe
    ("ok", a SQLSTATE, an HTTP status; "+1.2s" when it took that long)."""

    at: float  # seconds since the state database was stopped (negative: before)
    cells: dict[str, dict[str, str]] = field(default_factory=dict)  # probe -> replica -> cell

    def line(self) -> str:
        return " ".join(
            f"{probe}[{' '.join(f'{k}={v}' for k, v in sorted(by.items()))}]"
            for probe, by in self.cells.items()
        )


@dataclass(frozen=True)
class Probes:
    """What the outage scenario looks at through each replica, and the messages it was told."""

    replicas: Replicas
    long: dict[str, psycopg.Connection[Any]]  # sessions whose grants outlast the scenario
    short: dict[str, psycopg.Connection[Any]]  # sessions whose grants end during the outage
    logins: dict[str, Credential]  # a credential to log in with, every second
    told: dict[str, str] = field(default_factory=dict)  # cell -> the full message, once

    def query(self, session: psycopg.Connection[Any]) -> str:
        if session.closed:
            return "closed"
        try:
            session.execute("SELECT 1")
        except psycopg.Error as exc:
            return self._tell(f"{exc.sqlstate}", _gist(str(exc)))
        return "ok"

    def login(self, via: str) -> str:
        try:
            refused = self.replicas.login(via, self.logins[via])
        except OSError as exc:
            return self._tell("neterr", str(exc))
        if refused is None:
            return "ok"
        return self._tell(refused.get("C", "?"), refused.get("M", ""))

    def write(self, via: str) -> str:
        body = {"target": TARGET_DB, "access_level": "read-only", "duration": "5m",
                "reason": "probe"}  # fmt: skip
        try:
            status, answer = self.replicas[via].call("POST", "/api/v1/requests", "bob", body)
        except OSError as exc:
            return self._tell("neterr", str(exc))
        if status >= 400:
            return self._tell(str(status), str(answer.get("error", {}).get("message", answer)))
        return str(status)

    def _tell(self, cell: str, message: str) -> str:
        self.told.setdefault(cell, message)
        return cell


def _gist(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "?"


def _timed(probe: Callable[[], str]) -> str:
    began = time.monotonic()
    cell = probe()
    took = time.monotonic() - began
    return f"{cell}+{took:.1f}s" if took > SLOW else cell


def observe(pool: ThreadPoolExecutor, at: float, probes: Probes) -> Second:
    """One second's look, every replica's probes at once (each bounded by its timeouts)."""
    jobs: dict[tuple[str, str], Future[str]] = {}
    for name in NAMES:
        jobs["sessions", name] = pool.submit(_timed, partial(probes.query, probes.long[name]))
        jobs["short", name] = pool.submit(_timed, partial(probes.query, probes.short[name]))
        jobs["logins", name] = pool.submit(_timed, partial(probes.login, name))
        jobs["writes", name] = pool.submit(_timed, partial(probes.write, name))
    seen = Second(at)
    for (probe, name), job in jobs.items():
        seen.cells.setdefault(probe, {})[name] = job.result(timeout=60)
    return seen


def outage(replicas: Replicas, state: StateCluster, seconds: int) -> None:
    print(f"\nstate database stopped for {seconds} s (pg_ctl stop -m fast), then started")
    long_grants = {n: replicas.grant(via=(n, n, n)) for n in NAMES}
    short_grants = {n: replicas.grant(via=(n, n, n), duration=f"{SHORT_GRANT_SECONDS}s")
                    for n in NAMES}  # fmt: skip
    probes = Probes(
        replicas,
        {n: replicas.session(n, long_grants[n]) for n in NAMES},
        {n: replicas.session(n, short_grants[n]) for n in NAMES},
        {n: replicas.grant(via=(n, n, n)) for n in NAMES},
    )  # fmt: skip
    seen: list[Second] = []
    with ThreadPoolExecutor(len(NAMES) * 4) as pool:
        seen.append(observe(pool, -1.0, probes))
        stopped = time.monotonic()
        state.stop()
        print(f"  stop took {time.monotonic() - stopped:.2f} s")
        for tick in range(seconds + RECOVERY_SECONDS):
            _sleep_until(stopped + tick)
            if tick == seconds:
                began = time.monotonic()
                state.start()
                print(f"  start took {time.monotonic() - began:.2f} s "
                      f"(at {began - stopped:.1f} s)")  # fmt: skip
            seen.append(observe(pool, time.monotonic() - stopped, probes))
    _print_changes(seen)
    for cell, message in sorted(probes.told.items()):
        print(f"  {cell}: {message}")
    _resync(replicas, probes.long["c"], long_grants["c"].request_id)


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _print_changes(seen: Sequence[Second]) -> None:
    previous = ""
    for second in seen:
        line = second.line()
        if line != previous:
            print(f"  t={second.at:6.1f}s {line}")
            previous = line
    print(f"  (t={seen[-1].at:.1f}s: end of observation)")


def _resync(replicas: Replicas, session: psycopg.Connection[Any], request_id: str) -> None:
    """After the restart: a revocation on a still reaches the session on c."""
    started = time.monotonic()
    status, _ = replicas.revoke(request_id, "a", reason="trial")
    returned = time.monotonic()
    readable, _, _ = select.select([session.fileno()], [], [], BOUND)
    arrived = time.monotonic()
    told = _error_of(session) if readable else "nothing"
    when = f"{1000 * (arrived - returned):.0f} ms after the call returned"
    when = when if readable else "not within the bound"
    call = f"revoke on a ({status}, {1000 * (returned - started):.0f} ms)"
    print(f"  after the restart: {call} -> session on c told {told!r}, {when}")


# -- leader failover ----------------------------------------------------------------------------

FAILOVER_BOUND = 30.0  # seconds for another replica to lead, at most
LEADER_POLL = 0.02  # seconds between looks at the replicas' pgwarden_leader gauges


def leading(replica: Replica) -> bool:
    """Whether `replica` reports itself the leader (False if it is not running or answering)."""
    if replica.served is None:
        return False
    try:
        return replica.running.metric("pgwarden_leader") == 1
    except OSError:
        return False


def failovers(replicas: Replicas, count: int) -> None:
    """kill -9 the leader `count` times: how long until another replica leads (its gauge)."""
    took: list[float] = []
    for _ in range(count):
        deadline = time.monotonic() + FAILOVER_BOUND
        leader = None
        while leader is None and time.monotonic() < deadline:
            leader = next((r.name for r in replicas if leading(r)), None)
            time.sleep(LEADER_POLL)
        if leader is None:
            print("  no replica leads: failover not measured")
            return
        killed = time.monotonic()
        replicas.kill(leader)
        others = [r for r in replicas if r.name != leader]
        while not any(leading(r) for r in others) and time.monotonic() < killed + FAILOVER_BOUND:
            time.sleep(LEADER_POLL)
        took.append(time.monotonic() - killed)
        replicas.start(leader)
    took.sort()
    print(
        f"\nleader failover after kill -9, {len(took)} times: p50 {1000 * percentile(took, 50):.0f}"
        f" ms, max {1000 * took[-1]:.0f} ms"
    )


# -- the stack --------------------------------------------------------------------------------


@contextlib.contextmanager
def stack(staleness: int) -> Iterator[tuple[Replicas, StateCluster, PostgresServer]]:
    with (
        postgres_server() as upstream,
        state_cluster() as state,
        tempfile.TemporaryDirectory(prefix="pgwarden-ha-") as directory,
    ):
        deployment = PgwardenDeployment(upstream)
        deployment.prepare()
        with running_replicas(
            deployment, state, Path(directory), new_schema_name("ha_trials"),
            max_staleness=f"{staleness}s",
        ) as replicas:  # fmt: skip
            yield replicas, state, upstream


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ha_trials",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--trials", type=int, default=50, help="revocation trials (default 50)")
    parser.add_argument(
        "--outage", type=int, default=60,
        help="seconds the state database is stopped; 0: skip (default 60)",
    )  # fmt: skip
    parser.add_argument(
        "--failovers", type=int, default=10,
        help="times the leader is killed with SIGKILL, to time the takeover (default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--staleness", type=int, default=30,
        help="the replicas' state.max_staleness, seconds (default 30)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))  # clean up, as Ctrl-C
    with stack(args.staleness) as (replicas, state, upstream):
        with psycopg.connect(upstream.dsn(dbname=TARGET_DB), autocommit=True) as watcher:
            trials = [trial(replicas, watcher, i) for i in range(args.trials)]
        wrong = report_trials(trials)
        if args.failovers > 0:
            failovers(replicas, args.failovers)
        if args.outage > 0:
            outage(replicas, state, args.outage)
        problems = [
            f"{r.name}: {line}" for r in replicas for line in r.log_text().splitlines()
            if " ERROR " in line or "Traceback" in line
        ]  # fmt: skip
        print(f"\n{len(problems)} ERROR lines in the replicas' logs (expected during an outage)")
        for line in problems[:20]:
            print(f"  {line[:200]}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
