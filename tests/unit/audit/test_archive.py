"""Archiving rotated files (`pgwarden audit archive`): the remainder verifies on its own from a
signed anchor, the archive and the remainder verify together, and every way of faking it fails.

A log of 66 records over five files is built per test (four rotated, one active); the archiver
moves the oldest to another directory. Then the remainder, the anchor and the archive are changed
the way an intruder or an accident would: a tampered anchor, an anchor signed with another key or
for another chain, an older anchor put back, a file deleted from the middle or from the archive,
an old head file. `verify` must fail and name the file to look at.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.audit.archive import (
    ANCHOR_DOMAIN,
    BadAnchor,
    FileFacts,
    anchor_copy_name,
    anchor_path,
    choose,
    parse,
    seal,
)
from proxy.audit.records import Signer, head_path, log_files
from proxy.audit.sink_state import AuditUnavailable
from proxy.audit.verify import verify
from tests.fixtures.clock import FakeClock
from tests.unit.audit.archive_helpers import (
    anchor_json,
    archive,
    live_anchor,
    rotated_log,
    write_anchor,
)
from tests.unit.audit.helpers import KEY, event, lines_of, open_log, write_lines

OTHER_KEY = b"another-key-of-at-least-16-bytes"


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = rotated_log(tmp_path / "log" / "audit.jsonl")
    assert len(log_files(path)) == 5
    return path


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    return tmp_path / "vault"


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- what archiving leaves -----------------------------------------------------------------------


def test_the_remainder_verifies_alone_and_with_the_archive(log: Path, vault: Path) -> None:
    before = verify(log, KEY)
    rotated = [f for f in log_files(log) if f != log]
    result = archive(log, vault, keep=2)
    assert [f.name for f in result.archived] == [f.name for f in rotated[:2]]
    assert names(vault) == [*(f.name for f in rotated[:2]), anchor_copy_name(log.name, 28)]
    assert [f.name for f in log_files(log)] == [rotated[2].name, rotated[3].name, log.name]
    alone = verify(log, KEY)
    assert alone.ok, alone.summary()
    assert alone.summary().endswith("after the records archived up to seq 28")
    together = verify(log, KEY, archives=[vault])
    assert together.ok, together.summary()
    assert (together.records, together.from_archive) == (before.records, 2)
    assert together.summary().startswith(f"ok: {before.records} records in 5 files (2 archived)")


def test_the_anchor_names_the_files_the_link_and_who_archived(log: Path, vault: Path) -> None:
    facts = {f.name: f for f in verify(log, KEY).file_facts}
    originals = {f.name: f.read_bytes() for f in log_files(log)}
    archive(log, vault, keep=2)
    body = anchor_json(log)
    first, last = facts["audit.jsonl.000000000001"], facts["audit.jsonl.000000000015"]
    assert body["files"] == [
        {"name": name, "size": len(originals[name]),
         "sha256": hashlib.sha256(originals[name]).hexdigest()}
        for name in (first.name, last.name)
    ]  # fmt: skip
    assert (body["start_seq"], body["start_prev"]) == (1, "0" * 64)
    assert (body["seq"], body["mac"]) == (last.last_seq, last.last_mac)
    assert json.loads(lines_of(log_files(log)[0])[0])["prev"] == body["mac"]
    assert body["archived_by"] == "auditor"
    assert body["host"] == "host1"
    assert body["archived_at"] == "2026-01-05T09:00:00.000000Z"
    assert body["destination"] == str(vault.absolute())
    assert (vault / anchor_copy_name(log.name, 28)).read_bytes() == anchor_path(log).read_bytes()
    for name in (first.name, last.name):
        assert (vault / name).read_bytes() == originals[name]
        assert (vault / name).stat().st_mode & 0o777 == 0o600


def test_the_file_being_written_is_never_archived(log: Path, vault: Path) -> None:
    result = archive(log, vault, keep=0)
    assert len(result.archived) == 4
    assert log_files(log) == [log]
    assert verify(log, KEY).ok
    again = archive(log, vault, keep=0)
    assert (again.anchor, again.kept) == (None, 0)


def test_successive_archives_chain_and_verify_across_directories(log: Path, tmp_path: Path) -> None:
    first = archive(log, tmp_path / "one", keep=3).anchor
    second = archive(log, tmp_path / "two", keep=0).anchor
    assert first is not None
    assert second is not None
    assert (second.start_seq, second.start_prev) == (first.seq + 1, first.mac)
    assert verify(log, KEY).ok
    both = verify(log, KEY, archives=[tmp_path / "one", tmp_path / "two"])
    assert both.ok, both.summary()
    half = verify(log, KEY, archives=[tmp_path / "two"])
    assert not half.ok
    assert "the log starts at seq 15: records 1-14 are missing" in half.summary()


def test_the_server_goes_on_writing_after_an_archive(log: Path, vault: Path) -> None:
    archive(log, vault, keep=1)
    reopened = open_log(log)
    reopened.append(event())
    reopened.close()
    assert verify(log, KEY).ok
    assert verify(log, KEY, archives=[vault]).ok


def test_with_every_rotated_file_archived_and_the_active_one_empty_the_chain_goes_on(
    log: Path, vault: Path
) -> None:
    """A crash just after a rotation leaves an empty active file; with every rotated file
    archived, the log reopens from the anchor, not from seq 1."""
    anchor = archive(log, vault, keep=0).anchor
    assert anchor is not None
    log.write_bytes(b"")
    head_path(log).unlink()
    reopened = open_log(log)
    reopened.append(event())
    reopened.close()
    first = json.loads(lines_of(log)[0])
    assert (first["seq"], first["prev"]) == (anchor.seq + 1, anchor.mac)
    assert verify(log, KEY).ok
    assert verify(log, KEY, archives=[vault]).ok


def test_with_every_file_archived_a_tampered_anchor_refuses_to_reopen_the_log(
    log: Path, vault: Path
) -> None:
    """Going on from seq 1 would hide what happened to the anchor: the log refuses to open,
    naming the anchor and where a good copy is."""
    archive(log, vault, keep=0)
    log.write_bytes(b"")
    head_path(log).unlink()
    anchor = anchor_path(log)
    anchor.write_bytes(anchor.read_bytes().replace(b'"seq":', b'"seq":1'))
    with pytest.raises(AuditUnavailable) as caught:
        open_log(log)
    assert f"{anchor} is not a valid archive anchor" in str(caught.value.detail)
    assert log.read_bytes() == b""  # nothing written: no new chain from seq 1


# -- tampering --------------------------------------------------------------------------------


def test_deleting_the_oldest_file_without_archiving_fails_and_says_how_to_prune(log: Path) -> None:
    log_files(log)[0].unlink()
    report = verify(log, KEY)
    assert not report.ok
    assert "the log starts at seq 15: records 1-14 are missing" in report.summary()
    assert "`pgwarden audit archive`" in report.summary()


@pytest.mark.parametrize(
    "change",
    [lambda b: b.replace(b'"seq":28', b'"seq":27'),
     lambda b: b.replace(b'"archived_by":"auditor"', b'"archived_by":"nobody"'),
     lambda b: b.replace(b'"anchor_mac":"', b'"anchor_mac":"0'),
     lambda b: b[:-20] + b"\n", lambda b: b""],
    ids=["seq", "who", "mac", "truncated", "empty"],
)  # fmt: skip
def test_a_tampered_anchor_fails(log: Path, vault: Path, change: object) -> None:
    archive(log, vault, keep=2)
    path = anchor_path(log)
    assert callable(change)
    path.write_bytes(change(path.read_bytes()))
    report = verify(log, KEY)
    assert report.problem is not None
    assert report.problem.file == "audit.jsonl.anchor"
    assert "anchor" in report.problem.message
    assert not verify(log, KEY, archives=[vault]).ok


def test_an_anchor_signed_with_another_key_fails(log: Path, vault: Path) -> None:
    archive(log, vault, keep=2)
    write_anchor(log, live_anchor(log), key=OTHER_KEY)
    report = verify(log, KEY)
    assert report.problem is not None
    assert report.problem.file == "audit.jsonl.anchor"
    assert "mac does not match: it was altered, or another key wrote it" in report.summary()


def test_an_anchor_is_not_a_head_and_a_head_is_not_an_anchor(log: Path) -> None:
    signer = Signer(KEY)
    assert signer.tag(ANCHOR_DOMAIN, b"{}") != signer.tag(b"pgwarden-audit-head-v1\n", b"{}")
    with pytest.raises(BadAnchor):
        parse(signer, head_path(log).read_bytes())


def test_an_anchor_moved_from_another_chain_fails(log: Path, vault: Path) -> None:
    """Every chain of a server shares the key: worker 1's anchor must not pass for the primary's."""
    worker = rotated_log(log.with_name("audit.worker1.jsonl"))
    archive(worker, vault, keep=2)
    archive(log, vault, keep=2)
    shutil.copy(anchor_path(worker), anchor_path(log))
    report = verify(log, KEY)
    assert report.problem is not None
    assert "this is audit.worker1.jsonl's anchor, not audit.jsonl's" in report.summary()


def test_an_older_anchor_put_back_fails(log: Path, vault: Path) -> None:
    archive(log, vault, keep=3)
    archive(log, vault, keep=1)
    shutil.copy(vault / anchor_copy_name(log.name, 14), anchor_path(log))
    report = verify(log, KEY)
    assert report.problem is not None
    assert "the log starts at seq 43 but the anchor audit.jsonl.anchor ends at seq 14" in str(
        report.problem
    )


def test_a_forged_anchor_that_skips_records_fails_on_its_files(log: Path, vault: Path) -> None:
    """Even with the key, an anchor cannot make the archive skip a file: its ends must be the
    records of the files it names."""
    archive(log, vault, keep=2)
    anchor = live_anchor(log)
    forged = dataclasses.replace(anchor, files=anchor.files[1:])
    write_anchor(log, forged)
    assert verify(log, KEY).ok  # alone, the remainder only hangs on the link
    (vault / anchor_copy_name(log.name, 28)).write_bytes(seal(Signer(KEY), forged))
    report = verify(log, KEY, archives=[vault])
    assert report.problem is not None
    assert "the anchor's records 1-28 are not its files'" in report.problem.message


def test_a_file_removed_from_the_middle_of_the_remainder_fails(log: Path, vault: Path) -> None:
    archive(log, vault, keep=2)
    log_files(log)[1].unlink()
    report = verify(log, KEY)
    assert "seq jumps from 42 to 57: record(s) 43-56 are missing" in report.summary()


def test_the_first_file_after_the_anchor_removed_fails(log: Path, vault: Path) -> None:
    archive(log, vault, keep=2)
    log_files(log)[0].unlink()
    report = verify(log, KEY)
    assert report.problem is not None
    assert report.problem.message.startswith(
        "the log starts at seq 43 but the anchor audit.jsonl.anchor ends at seq 28: "
        "records 29-42 are missing"
    )


def test_the_anchor_removed_fails(log: Path, vault: Path) -> None:
    archive(log, vault, keep=2)
    anchor_path(log).unlink()
    assert "the log starts at seq 29: records 1-28 are missing" in verify(log, KEY).summary()


def test_a_file_removed_from_the_archive_fails(log: Path, vault: Path) -> None:
    archive(log, vault, keep=1)
    (vault / "audit.jsonl.000000000015").unlink()
    report = verify(log, KEY, archives=[vault])
    assert "record(s) 15-28 are missing (in neither the log nor the archive" in report.summary()
    assert verify(log, KEY).ok  # the remainder alone does not need the archive


def test_the_last_archived_file_removed_fails_on_the_anchor(log: Path, vault: Path) -> None:
    archive(log, vault, keep=1)
    (vault / "audit.jsonl.000000000029").unlink()
    report = verify(log, KEY, archives=[vault])
    assert not report.ok
    assert "record(s) 29-42 are missing" in report.summary()


def test_an_archived_file_altered_fails(log: Path, vault: Path) -> None:
    archive(log, vault, keep=2)
    file = vault / "audit.jsonl.000000000015"
    lines = lines_of(file)
    lines[3] = lines[3].replace(b"wrong_password", b"wrong_passw0rd")
    write_lines(file, lines)
    report = verify(log, KEY, archives=[vault])
    assert report.problem is not None
    assert (report.problem.file, report.problem.line) == (file.name, 4)


def test_a_renamed_anchor_copy_fails(log: Path, vault: Path) -> None:
    archive(log, vault, keep=2)
    (vault / anchor_copy_name(log.name, 28)).rename(vault / anchor_copy_name(log.name, 30))
    report = verify(log, KEY, archives=[vault])
    assert "this is audit.jsonl.anchor.000000000028, renamed" in report.summary()


def test_two_logs_archived_to_one_place_fail(log: Path, vault: Path, tmp_path: Path) -> None:
    archive(log, vault, keep=2)
    other = rotated_log(tmp_path / "other" / "audit.jsonl", clock=FakeClock())  # same key
    shutil.copy(log_files(other)[1], log.parent / "audit.jsonl.000000000015")
    report = verify(log, KEY, archives=[vault])
    assert "differ: two logs archived to one place?" in report.summary()


def test_an_old_head_put_back_fails(log: Path, vault: Path) -> None:
    archive(log, vault, keep=2)
    old = Signer(KEY).head(20, "0" * 64, log.name, "2026-01-05T09:00:00.000000Z")
    head_path(log).write_bytes(old)
    report = verify(log, KEY)
    assert "the head anchors seq 20, before the anchor audit.jsonl.anchor" in report.summary()


# -- choosing what to archive -----------------------------------------------------------------


def facts(*ends: str) -> list[FileFacts]:
    return [FileFacts(f"f{n}", 1, "0" * 64, 1, last_ts=ts) for n, ts in enumerate(ends)]


@pytest.mark.parametrize(
    ("keep", "before", "chosen"),
    [(0, None, 4), (1, None, 3), (4, None, 0), (9, None, 0),
     (None, "2026-01-02", 1), (None, "2026-01-03T00:00:00Z", 2), (None, "2026-01-01", 0),
     (None, "2027-01-01", 4), (3, "2027-01-01", 1), (0, "2026-01-03", 2)],
)  # fmt: skip
def test_the_oldest_files_are_chosen_by_count_and_date(
    keep: int | None, before: str | None, chosen: int
) -> None:
    files = facts("2026-01-01T12:00:00.000000Z", "2026-01-02T12:00:00.000000Z",
                  "2026-01-03T12:00:00.000000Z", "2026-01-04T12:00:00.000000Z")  # fmt: skip
    when = datetime.fromisoformat(before).replace(tzinfo=UTC) if before else None
    assert choose(files, keep=keep, before=when) == files[:chosen]


def test_a_date_archives_the_files_whose_last_record_is_older(tmp_path: Path) -> None:
    path = rotated_log(tmp_path / "log" / "audit.jsonl", clock=FakeClock())
    by_end = {f.name: f.last_ts for f in verify(path, KEY).file_facts}
    cut = datetime.fromisoformat(by_end["audit.jsonl.000000000015"])
    result = archive(path, tmp_path / "vault", keep=None, before=cut)
    assert [f.name for f in result.archived] == ["audit.jsonl.000000000001"]
    assert verify(path, KEY, archives=[tmp_path / "vault"]).ok
