"""Property: for any session of simple and extended round trips, however the client's bytes are
cut into chunks and however the answers interleave with them, the records name every statement
and parameter the database executed, in order, with its outcome.

`Backend` is a model of PostgreSQL's side of the protocol (answers in order; after an error in
an extended batch everything up to the Sync is skipped). It keeps the ground truth: what it
executed and how that ended. `tests/fixtures/query_log.py` is what a reader of the audit log does:
it replays the steps of each record with that record's outcome and lists what was executed. The
two lists must be equal, and every record must be settled exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit.encode import EncodedRecord
from proxy.audit.recorder import UPSTREAM_TYPES, SessionRecorder, Written
from proxy.wire import (
    Bind,
    BindComplete,
    CommandComplete,
    Describe,
    ErrorResponse,
    Execute,
    NoData,
    Parse,
    ParseComplete,
    PortalSuspended,
    Query,
    ReadyForQuery,
    Sync,
    TransactionStatus,
)
from tests.fixtures.examples import examples
from tests.fixtures.query_log import Executed, executed, outcomes
from tests.unit.audit.helpers import frames_of, recorder

FAILS = {"parse": "42601", "bind": "22P02", "execute": "22012", "query": "42P01"}


@dataclass(frozen=True)
class Statement:
    text: str
    rows: int
    fails: str | None  # "parse", "bind", "execute" (extended) or "query" (simple): where it fails


@dataclass(frozen=True)
class Step:
    statement: Statement
    name: str  # "" for the unnamed statement
    parse: bool  # False: a statement prepared earlier, bound by name
    params: tuple[bytes | None, ...]
    formats: tuple[int, ...]
    max_rows: int


@dataclass
class Backend:
    prepared: dict[str, str] = field(default_factory=dict)  # name → text
    executed: list[Executed] = field(default_factory=list)
    skipping: bool = False
    portal: tuple[str, tuple[bytes | None, ...]] | None = None

    def answer(self, message: Any, statement: Statement | None) -> list[Any]:
        """The database's answers to one message (`statement`: what the message is about)."""
        if isinstance(message, Sync):
            self.skipping = False
            return [ReadyForQuery(TransactionStatus.IDLE)]
        if isinstance(message, Query):
            return self._simple(message)
        if self.skipping:
            return []
        assert statement is not None
        if isinstance(message, Describe):
            return [NoData()]
        steps = {Parse: self._parse, Bind: self._bind, Execute: self._execute}
        answers: list[Any] = steps[type(message)](message, statement)
        return answers

    def _parse(self, message: Any, statement: Statement) -> list[Any]:
        if statement.fails == "parse":
            return self._error("parse")
        self.prepared[message.statement] = message.query
        return [ParseComplete()]

    def _bind(self, message: Any, statement: Statement) -> list[Any]:
        if statement.fails == "bind" or message.statement not in self.prepared:
            return self._error("bind")
        self.portal = (self.prepared[message.statement], message.params)
        return [BindComplete()]

    def _execute(self, message: Any, statement: Statement) -> list[Any]:
        assert self.portal is not None
        text, params = self.portal
        if statement.fails == "execute":
            self.executed.append(("execute", text, params, (), FAILS["execute"]))
            return self._error("execute")
        if message.max_rows and statement.rows > message.max_rows:
            self.executed.append(("execute", text, params, (None,), None))
            return [PortalSuspended()]
        tag = f"SELECT {statement.rows}"
        self.executed.append(("execute", text, params, (tag,), None))
        return [CommandComplete(tag)]

    def _simple(self, query: Query) -> list[Any]:
        answers: list[Any] = []
        tags: list[str | None] = []
        for text in query.query.split("; "):
            if text.endswith("fails"):
                answers.append(ErrorResponse.error(FAILS["query"], "no such table"))
                self.executed.append(("query", query.query, None, tuple(tags), FAILS["query"]))
                return [*answers, ReadyForQuery(TransactionStatus.IDLE)]
            tags.append(f"SELECT {len(text)}")
            answers.append(CommandComplete(f"SELECT {len(text)}"))
        self.executed.append(("query", query.query, None, tuple(tags), None))
        return [*answers, ReadyForQuery(TransactionStatus.IDLE)]

    def _error(self, where: str) -> list[Any]:
        self.skipping = True
        return [ErrorResponse.error(FAILS[where], f"{where} failed")]


# -- the client's round trips -------------------------------------------------------------------

TEXTS = st.sampled_from(["SELECT $1", "SELECT a FROM t WHERE id = $1", "UPDATE t SET a = $1"])
VALUES = st.one_of(st.none(), st.binary(max_size=6), st.text("ab7 ", max_size=6).map(str.encode))


@st.composite
def round_trips(draw: st.DrawFn) -> list[tuple[Any, Statement | None]]:
    """Messages, each with the statement it is about: simple Queries and extended batches."""
    messages: list[tuple[Any, Statement | None]] = []
    names: list[str] = []
    for trip in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            parts = draw(st.lists(st.sampled_from(["SELECT 1", "SELECT 22", "x fails"]),
                                  min_size=1, max_size=3))  # fmt: skip
            messages.append((Query("; ".join(parts)), None))
            continue
        for index in range(draw(st.integers(1, 3))):
            step = draw(steps(names, f"s{trip}_{index}"))
            statement = step.statement
            if step.parse:
                messages.append((Parse(step.name, statement.text, ()), statement))
                if statement.fails != "parse" and step.name:
                    names.append(step.name)
            messages.append((Bind("", step.name, step.formats, step.params), statement))
            messages.append((Describe("P", ""), statement))
            messages.append((Execute("", step.max_rows), statement))
        messages.append((Sync(), None))
    return messages


@st.composite
def steps(draw: st.DrawFn, names: list[str], new_name: str) -> Step:
    reuse = bool(names) and draw(st.booleans())
    name = draw(st.sampled_from(names)) if reuse else draw(st.sampled_from(["", new_name]))
    fails = draw(
        st.sampled_from([None, None, None, "bind", "execute"] + ([] if reuse else ["parse"]))
    )
    statement = Statement(draw(TEXTS), draw(st.integers(0, 3)), fails)
    params = tuple(draw(st.lists(VALUES, max_size=3)))
    formats = tuple(
        draw(st.lists(st.sampled_from([0, 1]), min_size=len(params), max_size=len(params)))
    )
    return Step(statement, name, not reuse, params, formats, draw(st.sampled_from([0, 0, 2])))


@settings(max_examples=examples(300), deadline=None)
@given(round_trips(), st.data())
def test_the_log_names_every_executed_statement_with_its_outcome(
    session: list[tuple[Any, Statement | None]], data: st.DataObject
) -> None:
    rec: SessionRecorder = recorder()
    backend = Backend()
    written: list[Written] = []
    answers: list[Any] = []
    position = 0
    while position < len(session):
        size = data.draw(st.integers(1, len(session) - position), label="chunk")
        chunk = session[position : position + size]
        position += size
        written += rec.client_frames(frames_of(*(message for message, _ in chunk)))
        for message, statement in chunk:
            answers += backend.answer(message, statement)
        delivered = data.draw(st.integers(0, len(answers)), label="answers delivered")
        frames = [f for f in frames_of(*answers[:delivered]) if f.type in UPSTREAM_TYPES]
        rec.upstream_frames(frames)
        del answers[:delivered]
    rec.upstream_frames([f for f in frames_of(*answers) if f.type in UPSTREAM_TYPES])
    written += rec.take_waiting()
    records = [json.loads("{" + r.members + "}") | {"kind": r.kind}
               for r in written if isinstance(r, EncodedRecord)]  # fmt: skip
    assert executed(records) == backend.executed
    batches = [r for r in records if r["kind"] == "query.batch"]
    settled = outcomes(records)
    assert sorted(settled) == list(range(1, len(batches) + 1))
    assert all(len(each) == 1 for each in settled.values())
