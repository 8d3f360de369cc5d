"""SECURITY.md row 40 without a subprocess: what a crash leaves on disk, and how opening seals it.

A crash is simulated by copying the log's directory while the log is open (what the disk holds
at that instant) and then damaging the copy the way a crash can: a last line cut at any point,
a line of zeros (a power loss with delayed allocation), a rotation interrupted between the rename
and the new file, a head replaced half-way. Reopening must cut exactly the torn bytes, append an
`audit.recovery` record that says what it found, and leave a log that verifies.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import pytest

from proxy.audit.log import AuditLog, AuditUnavailable, SinkOptions
from proxy.audit.records import head_path, log_files
from proxy.audit.verify import verify
from tests.fixtures.clock import FakeClock
from tests.unit.audit.helpers import (
    EIO,
    ENOSPC,
    KEY,
    FaultyFs,
    event,
    head_seq,
    lines_of,
    open_log,
    records,
)


def crashed_copy(source: Path, into: Path) -> Path:
    """The log's directory as a crash would leave it right now."""
    shutil.copytree(source.parent, into)
    return into / source.name


def log_with_unanchored_tail(tmp_path: Path) -> tuple[Path, int]:
    """A crashed log whose last record is beyond the head (written, not yet anchored)."""
    live = tmp_path / "live" / "audit.jsonl"
    live.parent.mkdir()
    log = open_log(live)
    for n in range(5):
        log.append(event(n))
    log.flush()
    anchored = log.last_seq
    log.append(event(99))
    crashed = crashed_copy(live, tmp_path / "crashed")
    log.close()
    return crashed, anchored


def recovery_records(path: Path) -> list[dict[str, object]]:
    return [r for r in records(path) if r["kind"] == "audit.recovery"]


@pytest.mark.parametrize("keep", [1, 2, 10, 57, -2, -1])
def test_a_torn_last_line_is_cut_and_recorded(tmp_path: Path, keep: int) -> None:
    path, anchored = log_with_unanchored_tail(tmp_path)
    last = lines_of(path)[-1]
    torn = last[:keep]
    path.write_bytes(b"".join(lines_of(path)[:-1]) + torn)
    open_log(path).close()
    (recovery,) = recovery_records(path)
    assert recovery["torn_bytes"] == len(torn)
    assert recovery["torn_sha256"] == hashlib.sha256(torn).hexdigest()
    assert base64.b64decode(str(recovery["torn_head_base64"])) == torn
    assert recovery["last_seq"] == anchored
    assert recovery["seq"] == anchored + 1
    assert verify(path, KEY).ok


def test_a_line_of_zeros_after_a_power_loss_is_cut(tmp_path: Path) -> None:
    path, _ = log_with_unanchored_tail(tmp_path)
    with path.open("ab") as file:
        file.write(b"\0" * 300 + b"\n")
    open_log(path).close()
    (recovery,) = recovery_records(path)
    assert recovery["torn_bytes"] == 301
    assert verify(path, KEY).ok


def test_an_unclean_shutdown_without_damage_is_recorded(tmp_path: Path) -> None:
    path, anchored = log_with_unanchored_tail(tmp_path)
    open_log(path).close()
    (recovery,) = recovery_records(path)
    assert recovery["reason"] == "the previous run did not close the log"
    assert recovery["torn_bytes"] == 0
    assert recovery["last_seq"] == anchored + 1
    assert verify(path, KEY).ok


def test_a_clean_close_needs_no_recovery(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    open_log(path).close()
    open_log(path).close()
    assert recovery_records(path) == []
    assert [r["kind"] for r in records(path)] == ["audit.opened", "audit.closed"] * 2


def test_records_lost_behind_the_head_stay_visible(tmp_path: Path) -> None:
    """Anchored records are gone (storage lost them, or someone cut them): the log goes on after
    the head, the recovery record says which are missing, and verify keeps reporting the gap."""
    path = tmp_path / "audit.jsonl"
    log = open_log(path)
    for n in range(5):
        log.append(event(n))
    log.close()
    lines = lines_of(path)
    path.write_bytes(b"".join(lines[:-3]))
    open_log(path).close()
    (recovery,) = recovery_records(path)
    assert (recovery["lost_from_seq"], recovery["lost_to_seq"]) == (len(lines) - 2, len(lines))
    report = verify(path, KEY)
    assert report.problem is not None
    assert report.problem.seq == len(lines) + 1
    assert "anchored by the head are missing" in report.problem.message


def test_a_crash_between_head_temp_and_rename_leaves_the_old_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fs = FaultyFs()
    log = open_log(path, fs=fs)
    before = head_path(path).read_bytes()
    log.append(event())
    fs.rename_error = lambda source, _target: EIO if source.name.endswith(".head.tmp") else None
    with pytest.raises(AuditUnavailable):
        log.flush()
    assert head_path(path).read_bytes() == before
    assert head_path(path).with_name("audit.jsonl.head.tmp").exists()
    assert verify(path, KEY).ok
    log.close()
    open_log(path).close()
    assert verify(path, KEY).ok


def fill_and_flush(log: AuditLog) -> None:
    for n in range(100):  # about 14 fill a file of 4096 bytes
        log.append(event(n))
    log.flush()


def test_a_crash_between_rotation_rename_and_new_file_recovers(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    fs = FaultyFs()
    options = SinkOptions(head_interval=3600, retry_interval=0, max_file_bytes=4096)
    log = open_log(path, fs=fs, options=options)
    fs.open_error = ENOSPC  # whoever rotates, the thread or flush(), fails after the rename
    with pytest.raises(AuditUnavailable):
        fill_and_flush(log)
    assert not path.exists()
    assert len(log_files(path)) == 1
    fs.open_error = None
    assert log.try_recover()
    log.append(event())
    log.close()
    kinds = [r["kind"] for r in records(path)]
    assert kinds[-4:] == ["audit.chain_continues", "audit.recovery", "login.failed", "audit.closed"]
    assert verify(path, KEY).ok


def test_the_wrong_key_refuses_to_open_rather_than_cut(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    open_log(path).close()
    size = path.stat().st_size
    with pytest.raises(AuditUnavailable, match="right key"):
        AuditLog(path, b"a different key of some length", clock=FakeClock())
    assert path.stat().st_size == size


def test_the_head_is_rewritten_at_open_and_close(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = open_log(path)
    assert head_seq(path) == 1
    log.append(event())
    log.close()
    assert head_seq(path) == 3
