"""One-shot queries on a logged-in upstream connection: pgwarden's own constant SQL, never a
client's.

The backstop (`pg_terminate_backend` as the control role) and `pgwarden policy check --connect`
(reading a role's attributes) each log in, run one simple-protocol query, read its rows and log
out. `simple_query` is that middle step. Rows come back as raw text-format values: a caller
compares them with the text forms it expects (`proxy.wire.TEXT_TRUE` for a boolean true).
"""

from __future__ import annotations

from proxy.upstream.connect import UpstreamConnection
from proxy.upstream.login import MessageStream
from proxy.wire import DataRow, ErrorResponse, Query, ReadyForQuery


class QueryFailed(Exception):
    """The server answered a one-shot query with an error."""


async def simple_query(conn: UpstreamConnection, sql: str) -> list[tuple[bytes | None, ...]]:
    """Run one simple-protocol query on a logged-in upstream connection; its rows as raw text.

    Only for pgwarden's own constant queries: no client text may ever reach `sql`."""
    stream = MessageStream(conn.peer)
    stream.send(Query(sql).encode())
    rows: list[tuple[bytes | None, ...]] = []
    error: str | None = None
    while not isinstance(message := await stream.receive(), ReadyForQuery):
        if isinstance(message, DataRow):
            rows.append(message.values)
        elif isinstance(message, ErrorResponse):
            error = message.message
    if error is not None:
        raise QueryFailed(error)
    return rows
