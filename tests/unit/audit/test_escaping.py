"""SECURITY.md row 37: whatever a client sends, the log stays one plain-ASCII JSON object per line.

User names and queries carry newlines, carriage returns, ANSI escapes, bidi overrides, line and
paragraph separators, NULs, DEL and undecodable bytes (decoded with `surrogateescape`, as the
wire codec does). Each record must stay on its own line, every byte must be printable ASCII, the
values must round-trip exactly (so the original bytes can be recovered), and no value can forge a
line that looks like a record.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit.events import LoginFailed
from proxy.audit.query_events import SimpleQuery
from proxy.audit.records import Signer, dump_fields
from proxy.audit.verify import verify
from tests.fixtures.examples import examples
from tests.unit.audit.helpers import KEY, open_log, records

HOSTILE = [
    "bob\nalice",
    "bob\r\n{}",
    "\x1b[2J\x1b[31mred\x1b[0m",
    "admin\u202egnp.exe",  # right-to-left override
    "a\u2028b\u2029c\u0085d",
    "nul\x00byte",
    "del\x7f",
    b"caf\xe9 \xff\xfe".decode("utf-8", "surrogateescape"),
    'quote" and backslash\\',
]

FORGERY = (
    'x"}\n{"seq":2,"ts":"2026-01-05T09:00:00.000000Z","kind":"login.failed","user":"root",'
    '"prev":"' + "0" * 64 + '","mac":"' + "f" * 64 + '"}\n'
)


def check_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    for line in lines:
        assert line.endswith(b"\n")
        assert all(0x20 <= byte <= 0x7E for byte in line[:-1]), line
        assert isinstance(json.loads(line), dict)
    return lines


def test_hostile_names_and_queries_stay_on_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = open_log(path)
    for text in [*HOSTILE, FORGERY]:
        log.append(LoginFailed(text, text, "10.0.0.1", "unknown_user", detail=text))
        log.append(SimpleQuery("s1", 1, text, len(text), truncated=False))
    log.close()
    lines = check_lines(path)
    assert len(lines) == 2 + 2 * (len(HOSTILE) + 1)
    written = [r for r in records(path) if r["kind"] in ("login.failed", "query.simple")]
    values = [r["user"] if r["kind"] == "login.failed" else r["text"] for r in written]
    assert values == [text for text in [*HOSTILE, FORGERY] for _ in (0, 1)]
    assert verify(path, KEY).ok


def test_undecodable_bytes_round_trip_exactly(tmp_path: Path) -> None:
    raw = b"SELECT '\xff\xfe\xc3(' -- \xed\xa0\x80"
    path = tmp_path / "audit.jsonl"
    log = open_log(path)
    log.append(SimpleQuery("s1", 1, raw.decode("utf-8", "surrogateescape"), len(raw), False))
    log.close()
    (query,) = [r for r in records(path) if r["kind"] == "query.simple"]
    assert query["text"].encode("utf-8", "surrogateescape") == raw
    assert b"\\udcff" in path.read_bytes()


@settings(max_examples=examples(300), deadline=None)
@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=40))
def test_any_text_makes_one_ascii_line_that_round_trips(text: str) -> None:
    signer = Signer(KEY)
    body = dump_fields(LoginFailed(text, "t", "a", "r").to_record())
    line, _ = signer.line(1, "2026-01-05T09:00:00.000000Z", "login.failed", body, "0" * 64)
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert all(0x20 <= byte <= 0x7E for byte in line[:-1])
    assert signer.parse(line).body["user"] == text
