"""One-shot queries on a logged-in upstream connection: pgwarden's own constant SQL, never a
client's.

The backstop (`pg_terminate_backend` as the control role), the orphan sweep at start and
`pgwarden policy check --connect` (reading a role's attributes) each log in, run one query, read
its rows and log out. `simple_query` is that middle step; with `params` it goes through the
extended protocol (Parse, Bind, Execute, Sync), so that names from the policy reach the server as
values, never as SQL text. Rows come back as raw text-format values: a caller compares them with
the text forms it expects (`proxy.wire.TEXT_TRUE` for a boolean true).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from proxy.upstream.connect import UpstreamConnection
from proxy.upstream.login import MessageStream
from proxy.wire import Bind, DataRow, ErrorResponse, Execute, Parse, Query, ReadyForQuery, Sync

# pgwarden's one-shot queries return a row (policy check, backstop) or a LIMITed set (the orphan
# sweep): a server that sends more is broken or hostile, and the caller closes the connection.
MAX_ROWS: Final = 10_000


class QueryFailed(Exception):
    """The server answered a one-shot query with an error."""


async def simple_query(
    conn: UpstreamConnection, sql: str, params: Sequence[str] = ()
) -> list[tuple[bytes | None, ...]]:
    """Run one query on a logged-in upstream connection; its rows as raw text.

    Only for pgwarden's own constant queries: no client text may ever reach `sql`. `params` are
    the values of $1, $2, ... (text format)."""
    stream = MessageStream(conn.peer)
    if params:
        values = tuple(value.encode("utf-8") for value in params)
        stream.send(
            Parse("", sql).encode() + Bind("", "", (), values).encode()
            + Execute("").encode() + Sync().encode()
        )  # fmt: skip
    else:
        stream.send(Query(sql).encode())
    rows: list[tuple[bytes | None, ...]] = []
    error: str | None = None
    # Postgres ends both flows with one ReadyForQuery; every message is read through the
    # stream's capped reader.
    while not isinstance(message := await stream.receive(), ReadyForQuery):
        if isinstance(message, DataRow):
            if len(rows) >= MAX_ROWS:
                raise QueryFailed(f"the server sent more than {MAX_ROWS} rows")
            rows.append(message.values)
        elif isinstance(message, ErrorResponse):
            error = message.message
    if error is not None:
        raise QueryFailed(error)
    return rows
