"""The query records (`query.*`, log format 3): one record per client round trip.

`recorder.py` makes them from wire messages, `shaping.py` redacts, cuts and encodes what they
hold. They are written on every query, so they are built as JSON text directly (`EncodedRecord`)
rather than as dataclasses; their shapes are these:

`query.batch` — written *before* the round trip is forwarded: a simple Query, or an
extended-protocol batch up to its Sync::

    {"session_id":"…","n":7,"steps":[{"parse":"","text":"SELECT $1::int"},
     {"bind":"","statement":"","params":["42"]},{"execute":""}],
     "done":[{"n":6,"status":"ok","tags":["SELECT 1"],"rows":1,"duration":0.000412}]}

- `n` numbers the session's records (batches and function calls) from 1;
- `steps`, in the order sent: `{"query":<text>}` (simple protocol, one or more statements);
  `{"parse":<statement>,"text":<text>,"param_types":[oids]}` (types only when given);
  `{"bind":<portal>,"statement":<statement>,"params":[...],"omitted":k,"redacted":true}`
  (`omitted`: values left out once the message's size budget was spent; `redacted`: the statement
  takes a password, so every value shows as `***`); `{"execute":<portal>,"max_rows":N}`
  (`max_rows` when not 0); `{"close":"statement"|"portal","name":<name>}`. A text cut at
  `audit.max_query_bytes` is followed by `"bytes":N,"truncated":true` (N: its size) in its step;
- a parameter is its text, `{"base64":…}` when binary, null for SQL NULL; one cut at
  `audit.max_param_bytes` is `{"text"|"base64":…,"bytes":N,"truncated":true}`;
- `"open":true`: the chunk ended before the batch's Sync; the batch goes on in the next record;
- `done` (when there is any): outcomes of this session's earlier records, settled since its
  previous record.

An outcome: `n` (the record it settles), `status` — `ok`, `error`, `skipped` (an error earlier in
the same batch made the database skip all of it) or `unfinished` (the session ended first) —,
`tags`, one per statement run, in order: the command tag, `""` for an empty query, null for an
Execute stopped at `max_rows` (PortalSuspended); `rows`, the sum of the tags' row counts (null if
none has one); `duration` in seconds, from the record to the answer that settled it; and for an
error `sqlstate`, `error` (the message) and `step`, the index in `steps` of the step that failed
(null: the implicit COMMIT at the Sync failed). Steps after it, up to the Sync, did not run.

`query.done` — `{"session_id":…,"done":[…]}`: outcomes no later record of the session carried
within `OUTCOME_DELAY` (`runtime/auditing.py`), or left at the session's end.

`query.function_call` — `{"session_id":…,"n":…,"function_oid":…,"args":[…],"args_omitted":k}`
plus `done`, like a batch; its outcome comes like a batch's. `query.copy` — the data of a COPY
started by record `n`: `direction` and `bytes` (written when the copy ends).

Formats 1 and 2 wrote one record per Query, Parse, Bind, Execute and FunctionCall message
(`query.simple`, `query.parse`, `query.bind`, `query.execute`, `query.function_call`) and a
`query.outcome` for each; `audit verify` reads both (`query_trail.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final

from proxy.audit.events import AuditEvent

BATCH: Final = "query.batch"
DONE: Final = "query.done"
FUNCTION_CALL_KIND: Final = "query.function_call"


class CopyDirection(StrEnum):
    IN = "in"  # COPY ... FROM STDIN: the client sends data
    OUT = "out"  # COPY ... TO STDOUT: the database sends data


@dataclass(frozen=True, slots=True)
class CopyTransfer(AuditEvent):
    """The data of a COPY started by record `n` (written when the copy ends)."""

    kind: ClassVar[str] = "query.copy"
    session_id: str
    n: int
    direction: CopyDirection
    bytes: int


class OutcomeStatus(StrEnum):
    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"  # an earlier error in the same extended-protocol batch skipped it
    UNFINISHED = "unfinished"  # the session ended before the database answered
