"""The archiver cut short at every step loses nothing, and running it again finishes the work.

A clean run is counted first: every change it makes to the disk (a file opened for writing, a
write, an fsync, a rename, a removal) is a step. Then, for each step, a fresh log is archived with
a file system that crashes there: the log must still verify on its own at once, and a second run
(to the same destination, or to another one) must leave the remainder verifying alone and the
archive plus the remainder verifying together, with no temporary file left. Then what the
archiver refuses: a destination that is the log's own directory or holds a different file of the
same name, a chain that does not verify, a second archiver at the same time.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from proxy.audit.archive import anchor_path
from proxy.audit.archiving import ArchiveRefused, ChainBroken
from proxy.audit.records import log_files
from proxy.audit.verify import verify
from tests.unit.audit.archive_helpers import Crash, CrashingFs, archive, rotated_log
from tests.unit.audit.helpers import KEY, lines_of, write_lines

KEEP = 1  # three of the four rotated files are archived


def temporaries(*directories: Path) -> list[Path]:
    return [p for d in directories if d.exists() for p in d.iterdir() if p.name.endswith(".tmp")]


def steps_of_a_clean_run(template: Path, tmp_path: Path) -> int:
    shutil.copytree(template.parent, tmp_path / "count")
    fs = CrashingFs()
    archive(tmp_path / "count" / template.name, tmp_path / "count-vault", keep=KEEP, fs=fs)
    return fs.steps


@pytest.mark.parametrize("second_destination", [False, True], ids=["same", "another"])
def test_a_run_cut_short_at_any_step_loses_nothing_and_a_rerun_finishes(
    tmp_path: Path, second_destination: bool
) -> None:
    template = rotated_log(tmp_path / "template" / "audit.jsonl")
    steps = steps_of_a_clean_run(template, tmp_path)
    assert steps > 20  # copies, fsyncs, renames, the two anchors, the removals
    for step in range(1, steps + 1):
        path = Path(shutil.copytree(template.parent, tmp_path / f"log{step}")) / template.name
        originals = {f.name: f.read_bytes() for f in log_files(path)}
        vault = tmp_path / f"vault{step}"
        with pytest.raises(Crash):
            archive(path, vault, keep=KEEP, fs=CrashingFs(at=step))
        cut_short = verify(path, KEY)
        assert cut_short.ok, f"step {step}: {cut_short.summary()}"
        rerun_vault = tmp_path / f"other{step}" if second_destination else vault
        result = archive(path, rerun_vault, keep=KEEP)
        vaults = [v for v in {vault, rerun_vault} if v.exists()]  # the rerun may have no work
        alone, together = verify(path, KEY), verify(path, KEY, archives=vaults)
        assert alone.ok, f"step {step}: {alone.summary()}"
        assert not alone.leftovers, f"step {step}: {alone.summary()}"
        assert together.ok, f"step {step}: {together.summary()}"
        assert together.records == 66
        assert len(log_files(path)) == KEEP + 1
        # (an abandoned destination may keep a temporary file: it is never read)
        assert not temporaries(path.parent, rerun_vault), f"step {step}"
        archived = {p.name: p.read_bytes() for v in vaults for p in v.iterdir()}
        for name in originals.keys() - {f.name for f in log_files(path)}:
            assert archived[name] == originals[name], f"step {step}: {name}"
        if cut_short.anchor is not None:  # the anchor was in place: the rerun only finishes
            assert result.anchor is None
            assert {f.name for f in result.finished} == {f.name for f in cut_short.leftovers}


def test_a_run_cut_short_after_its_anchor_still_verifies_and_says_to_run_again(
    tmp_path: Path,
) -> None:
    path = rotated_log(tmp_path / "log" / "audit.jsonl")
    fs = CrashingFs()
    archive(path, tmp_path / "count", keep=KEEP, fs=fs)  # the last steps: removals, one fsync
    path = rotated_log(tmp_path / "log2" / "audit.jsonl")
    with pytest.raises(Crash):
        archive(path, tmp_path / "vault", keep=KEEP, fs=CrashingFs(at=fs.steps - 2))
    report = verify(path, KEY)
    assert report.ok
    assert len(report.leftovers) == 2
    assert report.summary().endswith(
        "2 archived file(s) not yet removed: run `pgwarden audit archive` again"
    )
    assert verify(path, KEY, archives=[tmp_path / "vault"]).ok


def test_a_leftover_that_changed_is_not_accepted(tmp_path: Path) -> None:
    path = rotated_log(tmp_path / "log" / "audit.jsonl")
    fs = CrashingFs()
    archive(path, tmp_path / "count", keep=KEEP, fs=fs)
    path = rotated_log(tmp_path / "log2" / "audit.jsonl")
    with pytest.raises(Crash):
        archive(path, tmp_path / "vault", keep=KEEP, fs=CrashingFs(at=fs.steps - 2))
    leftover = log_files(path)[-3]
    lines = lines_of(leftover)
    write_lines(leftover, lines[:-1])
    report = verify(path, KEY)
    assert report.problem is not None
    assert report.problem.file == leftover.name
    assert "archived every record up to seq 42, but not this file" in report.problem.message
    with pytest.raises(ChainBroken):
        archive(path, tmp_path / "vault", keep=KEEP)


# -- refusals -------------------------------------------------------------------------------


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return rotated_log(tmp_path / "log" / "audit.jsonl")


def test_the_logs_own_directory_is_refused(log: Path) -> None:
    with pytest.raises(ArchiveRefused, match="is the log's own directory"):
        archive(log, log.parent / ".." / "log", keep=0)
    assert len(log_files(log)) == 5


def test_a_different_file_of_the_same_name_is_not_overwritten(log: Path, tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    vault.mkdir()
    (vault / "audit.jsonl.000000000015").write_bytes(b"someone else's\n")
    with pytest.raises(ArchiveRefused, match=r"exists and is not audit\.jsonl\.000000000015"):
        archive(log, vault, keep=0)
    assert (vault / "audit.jsonl.000000000015").read_bytes() == b"someone else's\n"
    assert len(log_files(log)) == 5
    assert not anchor_path(log).exists()
    assert verify(log, KEY).ok


def test_a_chain_that_does_not_verify_is_not_archived(log: Path, tmp_path: Path) -> None:
    file = log_files(log)[1]
    lines = lines_of(file)
    del lines[2]
    write_lines(file, lines)
    with pytest.raises(ChainBroken, match=r"does not verify, so it is not archived: audit\.jsonl"):
        archive(log, tmp_path / "vault", keep=0)
    assert not (tmp_path / "vault").exists()
    assert len(log_files(log)) == 5


def test_a_log_signed_with_another_key_is_not_archived(log: Path, tmp_path: Path) -> None:
    with pytest.raises(ChainBroken, match="is this the right key"):
        archive(log, tmp_path / "vault", keep=0, key=b"another-key-of-at-least-16-bytes")


def test_one_archiver_at_a_time(log: Path, tmp_path: Path) -> None:
    fd = os.open(log.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ArchiveRefused, match="another `pgwarden audit archive` is running"):
            archive(log, tmp_path / "vault", keep=0)
    finally:
        os.close(fd)
    assert archive(log, tmp_path / "vault", keep=0).anchor is not None
