"""SECURITY.md row 37: whatever a client sends, the log stays one plain-ASCII JSON object per line.

User names, queries and parameter values carry newlines, carriage returns, ANSI escapes, bidi
overrides, line and paragraph separators, NULs, DEL and undecodable bytes (decoded with
`surrogateescape`, as the wire codec does). Each record must stay on its own line, every byte
must be printable ASCII, the values must round-trip exactly (so the original bytes can be
recovered), and no value can forge a line that looks like a record.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy.audit.encode import EncodedRecord
from proxy.audit.events import LoginFailed
from proxy.audit.records import Signer, dump_fields
from proxy.audit.redact import Redactor
from proxy.audit.verify import verify
from proxy.wire import Bind, Execute, Parse, Query, Sync
from tests.fixtures.examples import examples
from tests.unit.audit.helpers import KEY, frames_of, open_log, query_record, recorder, records

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


def test_hostile_names_queries_and_values_stay_on_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = open_log(path)
    texts = [*HOSTILE, FORGERY]
    for text in texts:
        raw = text.encode("utf-8", "surrogateescape")
        log.append(LoginFailed(text, text, "10.0.0.1", "unknown_user", detail=text))
        batch = [Parse("", "SELECT $1", ()), Bind("", "", (), (raw,)), Execute(""), Sync()]
        if "\0" not in text:  # a Query's text is a protocol String: no NUL
            batch.append(Query(text))
        log.append_many(recorder().client_frames(frames_of(*batch)))
    log.close()
    check_lines(path)
    written = records(path)
    users = [r["user"] for r in written if r["kind"] == "login.failed"]
    batches = [r for r in written if r["kind"] == "query.batch"]
    values = [r["steps"][1]["params"][0] for r in batches if "parse" in r["steps"][0]]
    queries = [r["steps"][0]["query"] for r in batches if "query" in r["steps"][0]]
    assert users == values == texts
    assert queries == [text for text in texts if "\0" not in text]
    assert verify(path, KEY).ok


def test_undecodable_bytes_round_trip_exactly(tmp_path: Path) -> None:
    raw = b"SELECT '\xff\xfe\xc3(' -- \xed\xa0\x80"
    path = tmp_path / "audit.jsonl"
    log = open_log(path)
    log.append(query_record(raw.decode("utf-8", "surrogateescape")))
    log.close()
    (query,) = [r for r in records(path) if r["kind"] == "query.batch"]
    assert query["steps"][0]["query"].encode("utf-8", "surrogateescape") == raw
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


RAW = st.binary(max_size=40) | st.text(st.characters(codec="utf-8"), max_size=40).map(str.encode)


@settings(max_examples=examples(300), deadline=None)
@given(RAW)
def test_any_query_or_value_makes_one_ascii_line_that_round_trips(raw: bytes) -> None:
    """The query records' own encoders (orjson for values, with its ASCII fallback): any bytes a
    client sends as a value or a query."""
    signer = Signer(KEY)
    query = raw.replace(b"\0", b"")  # a protocol String holds no NUL
    text = raw.decode("utf-8", "surrogateescape")
    assume(Redactor().redact(text) == text)  # no `://x:y@`: this test is not about secrets
    batch = [
        Bind("", "", (), (raw,)),  # one value: quoted directly
        Bind("", "", (), (raw, raw)),  # two: orjson, or the ASCII encoder when it cannot
        Sync(),
        Query(query.decode("utf-8", "surrogateescape")),
    ]
    values, simple = recorder().client_frames(frames_of(*batch))
    assert isinstance(values, EncodedRecord)
    assert isinstance(simple, EncodedRecord)
    for record in (values, simple):
        line, _ = signer.line(1, "2026-01-05T09:00:00.000000Z", *record, "0" * 64)
        assert line.count(b"\n") == 1
        assert all(0x20 <= byte <= 0x7E for byte in line[:-1])
        steps = signer.parse(line).body["steps"]
        shown = [value for step in steps for value in step.get("params", [step.get("query")])]
        expected = [raw] * 3 if record is values else [query]
        assert [value.encode("utf-8", "surrogateescape") for value in shown] == expected
