"""SECURITY.md row 39: any change to the log is found, and the first bad record is named.

One log of 40 records over several files is built per test, then changed the way an intruder or
an accident would: a flipped byte, a deleted, reordered, inserted or replayed line, a truncated
tail, a deleted or renamed rotated file, a missing or forged head. `verify` must name the file,
the line and the seq of the first record it cannot trust.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.audit.records import head_path, log_files
from proxy.audit.verify import Problem, verify
from tests.unit.audit.helpers import KEY, build_log, event, lines_of, open_log, write_lines

COUNT = 40  # events appended; the log also holds opened/closed and chain_continues records


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    build_log(path, COUNT)
    assert len(log_files(path)) >= 3
    return path


def problem(path: Path, key: bytes = KEY) -> Problem:
    report = verify(path, key)
    assert not report.ok, "the change was not detected"
    assert report.problem is not None
    return report.problem


def seq_of(line: bytes) -> int:
    return int(json.loads(line)["seq"])


def middle(path: Path) -> Path:
    return log_files(path)[1]


def test_an_untouched_log_verifies(log: Path) -> None:
    report = verify(log, KEY)
    files = log_files(log)
    total = sum(len(lines_of(f)) for f in files)
    assert report.ok, report.summary()
    assert report.records == total == report.last_seq == report.head_seq
    assert report.summary() == f"ok: {total} records in {len(files)} files, head seq {total}"


@pytest.mark.parametrize("column", [12, 40, 80, -70, -3])
def test_a_flipped_byte_names_its_record(log: Path, column: int) -> None:
    file = middle(log)
    lines = lines_of(file)
    line = bytearray(lines[3])
    line[column] ^= 0x01
    lines[3] = bytes(line)
    write_lines(file, lines)
    found = problem(log)
    assert (found.file, found.line) == (file.name, 4)
    assert "mac" in found.message or "record line" in found.message


def test_a_deleted_line_is_found_at_the_next_one(log: Path) -> None:
    file = middle(log)
    lines = lines_of(file)
    gone = seq_of(lines[2])
    del lines[2]
    write_lines(file, lines)
    found = problem(log)
    assert (found.file, found.line, found.seq) == (file.name, 3, gone + 1)
    assert f"seq jumps from {gone - 1} to {gone + 1}" in found.message


def test_reordered_lines_are_found(log: Path) -> None:
    file = middle(log)
    lines = lines_of(file)
    first = seq_of(lines[4])
    lines[4], lines[5] = lines[5], lines[4]
    write_lines(file, lines)
    found = problem(log)
    assert (found.file, found.line, found.seq) == (file.name, 5, first + 1)


def test_an_inserted_forged_line_fails_its_mac(log: Path) -> None:
    file = middle(log)
    lines = lines_of(file)
    forged = json.loads(lines[2])
    forged["user"] = "mallory"
    lines.insert(3, json.dumps(forged, separators=(",", ":")).encode() + b"\n")
    write_lines(file, lines)
    found = problem(log)
    assert (found.file, found.line) == (file.name, 4)
    assert "mac does not match" in found.message


def test_a_replayed_line_is_found(log: Path) -> None:
    file = middle(log)
    lines = lines_of(file)
    lines.insert(4, lines[1])
    write_lines(file, lines)
    found = problem(log)
    assert (found.file, found.line, found.seq) == (file.name, 5, seq_of(lines[1]))
    assert "seq goes back" in found.message


def test_a_truncated_tail_is_found_against_the_head(log: Path) -> None:
    active = log_files(log)[-1]
    lines = lines_of(active)
    last_kept = seq_of(lines[-3])
    write_lines(active, lines[:-2])
    found = problem(log)
    assert (found.file, found.line, found.seq) == (active.name, len(lines) - 1, last_kept + 1)
    assert "the tail was truncated" in found.message


def test_a_line_cut_mid_way_is_found(log: Path) -> None:
    active = log_files(log)[-1]
    data = active.read_bytes()
    active.write_bytes(data[:-20])
    found = problem(log)
    assert found.file == active.name
    assert found.line == len(data[:-20].splitlines())
    assert "cut short" in found.message


def test_a_deleted_rotated_file_is_found(log: Path) -> None:
    files = log_files(log)
    gone = lines_of(files[1])
    files[1].unlink()
    found = problem(log)
    assert (found.file, found.line) == (files[2].name, 1)
    assert found.seq == seq_of(gone[-1]) + 1
    assert f"record(s) {seq_of(gone[0])}-{seq_of(gone[-1])} are missing" in found.message


def test_a_deleted_first_file_is_found(log: Path) -> None:
    files = log_files(log)
    files[0].unlink()
    found = problem(log)
    assert (found.file, found.line) == (files[1].name, 1)
    assert "the log starts at seq" in found.message


def test_a_renamed_rotated_file_is_found(log: Path) -> None:
    files = log_files(log)
    renamed = files[1].with_name(files[1].name[:-1] + "9")
    files[1].rename(renamed)
    found = problem(log)
    assert found.file in (renamed.name, files[2].name)


def test_a_missing_head_is_a_problem(log: Path) -> None:
    head_path(log).unlink()
    assert "head file is missing" in problem(log).message


def test_a_forged_head_is_a_problem(log: Path) -> None:
    head = json.loads(head_path(log).read_bytes())
    head["seq"] += 5
    head_path(log).write_text(json.dumps(head))
    assert "head" in problem(log).message


def test_the_wrong_key_fails_at_the_first_record(log: Path) -> None:
    found = problem(log, key=b"another key, sixteen bytes or more")
    assert (found.file, found.line, found.seq) == (log_files(log)[0].name, 1, 1)
    assert "right key" in found.message


def test_a_rollback_to_an_old_head_is_beyond_a_local_anchor(log: Path) -> None:
    """The documented limit: whoever can write the directory can cut the log back to an older
    head and put that head back. Copying heads off the host (or to WORM storage) closes it."""
    old_head = head_path(log).read_bytes()
    old_last = verify(log, KEY).last_seq
    reopened = open_log(log)
    reopened.append(event(99))
    reopened.close()
    assert verify(log, KEY).last_seq > old_last
    active = log_files(log)[-1]
    lines = lines_of(active)
    keep = [line for line in lines if seq_of(line) <= old_last]
    write_lines(active, keep)
    head_path(log).write_bytes(old_head)
    assert verify(log, KEY).ok
