"""SECURITY.md row 40: a writer killed with SIGKILL mid-record leaves a log that seals and verifies.

A child process appends in a loop with fsync policy `always`, printing each seq once it is
durable. Its file system writes every line in small pieces, so a kill lands inside a line more
often than not; in some rounds the child also stops on purpose half-way through a line and says
so, so that a torn line is certain. After each kill the parent reopens the log: the torn bytes
are cut, an `audit.recovery` record says so, every acknowledged record is still there, and the
whole chain — across all rounds and their recoveries — verifies. Bounded: a few rounds of a
fraction of a second each.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from proxy.audit.verify import verify
from tests.unit.audit.helpers import KEY, open_log, records

ROOT = Path(__file__).resolve().parents[3]
ROUNDS = 4

CHILD = """
import os, sys, time
from pathlib import Path
from proxy.audit.fsio import FileSystem
from proxy.audit.log import AuditLog, SinkOptions
from tests.fixtures.clock import FakeClock
from tests.unit.audit.helpers import KEY, query_record

stop_in = int(sys.argv[2])  # stop half-way through the stop_in'th record line (0: never)

class Chunky(FileSystem):
    lines = 0
    def write(self, fd, data):
        if data.startswith(b'{"seq":') and b'"ts":' in data[:40]:  # a record, not the head
            Chunky.lines += 1
            if Chunky.lines == stop_in:
                os.write(fd, data[: len(data) // 2])
                print("torn", flush=True)
                time.sleep(60)
        return os.write(fd, data[:16])

log = AuditLog(Path(sys.argv[1]), KEY, clock=FakeClock(),
               options=SinkOptions(head_interval=0.05, retry_interval=0), fs=Chunky())
for n in range(100000):
    ticket = log.append(query_record("SELECT " + "x" * (n % 300)))
    log.wait_durable(ticket, timeout=10)
    print(ticket, flush=True)
"""


def run_and_kill(path: Path, rng: random.Random, stop_in: int) -> tuple[list[int], bool]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(stop_in)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[int] = []
    torn = False
    try:
        assert child.stdout is not None
        for _ in range(rng.randint(5, 40)):
            line = child.stdout.readline().strip()
            assert line, "the writer died on its own"
            if line == "torn":
                torn = True
                break
            acknowledged.append(int(line))
        if not torn:
            time.sleep(rng.uniform(0, 0.01))
    finally:
        child.kill()
        rest, _ = child.communicate(timeout=10)
    assert child.returncode == -9
    acknowledged += [int(x) for x in rest.split() if x.isdigit()]
    return acknowledged, torn or "torn" in rest.split()


def test_kill_9_mid_write_recovers_to_a_verified_chain(tmp_path: Path) -> None:
    rng = random.Random(40)
    path = tmp_path / "audit.jsonl"
    for round_ in range(ROUNDS):
        stop_in = rng.randint(20, 200) if round_ % 2 == 0 else 0
        acknowledged, torn = run_and_kill(path, rng, stop_in)
        open_log(path).close()
        on_disk = records(path)
        seqs = {r["seq"] for r in on_disk}
        assert set(acknowledged) <= seqs, "an acknowledged record was lost"
        recoveries = [r for r in on_disk if r["kind"] == "audit.recovery"]
        assert len(recoveries) == round_ + 1
        if torn:
            assert recoveries[-1]["torn_bytes"] > 0
        report = verify(path, KEY)
        assert report.ok, report.summary()
        assert report.recoveries == round_ + 1
