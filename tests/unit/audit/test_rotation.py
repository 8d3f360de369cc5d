"""Rotation by size: the chain continues across files, and the files name their first seq."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from proxy.audit.log import SinkOptions
from proxy.audit.records import archive_seq, head_path, log_files
from proxy.audit.verify import verify
from tests.unit.audit.helpers import KEY, build_log, event, eventually, lines_of, open_log


def test_the_chain_continues_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    build_log(path, 60)
    files = log_files(path)
    assert len(files) >= 4
    assert files[-1] == path
    for previous, current in itertools.pairwise(files):
        last = json.loads(lines_of(previous)[-1])
        first = json.loads(lines_of(current)[0])
        assert first["kind"] == "audit.chain_continues"
        assert first["previous_file"] == previous.name
        assert (first["seq"], first["prev"]) == (last["seq"] + 1, last["mac"])
        if current != path:
            assert archive_seq(path, current) == first["seq"]
    report = verify(path, KEY)
    assert report.ok, report.summary()
    assert len(report.files) == len(files)


def test_the_background_thread_rotates_a_full_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = open_log(path, options=SinkOptions(head_interval=3600, max_file_bytes=4096))
    while path.stat().st_size < 4096:
        log.append(event())
    log.kick()
    eventually(lambda: len(log_files(path)) == 2)
    eventually(lambda: json.loads(head_path(path).read_bytes())["seq"] == log.last_seq)
    log.append(event())
    log.close()
    assert verify(path, KEY).ok


def test_rotated_files_sort_in_chain_order_past_the_digits_of_seq(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    names = [path.with_name(f"audit.jsonl.{seq:012d}") for seq in (9, 10, 100)]
    for name in reversed(names):
        name.touch()
    path.with_name("audit.jsonl.head").touch()
    path.with_name("audit.jsonl.000000000001.tmp").touch()
    assert log_files(path) == names
