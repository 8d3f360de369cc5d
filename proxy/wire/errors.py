"""The only exceptions the wire codec raises.

h11's split: `RemoteProtocolError` means the peer broke the protocol (the session answers with a
FATAL ErrorResponse carrying the error's SQLSTATE, 08P01 unless stated, then closes);
`LocalProtocolError` means pgwarden tried to encode something the protocol cannot carry (a bug on
our side, reported to the client as a generic internal error). Both are `PgwardenError`s, so the
session's one exception-to-ErrorResponse function handles them.

Parsers and decoders raise nothing else: not `struct.error`, `IndexError` or `UnicodeDecodeError`.
"""

from __future__ import annotations

from proxy.errors import PgwardenError, Severity
from proxy.wire import sqlstate


class ProtocolError(PgwardenError):
    """Base of every wire codec error."""

    sqlstate = sqlstate.PROTOCOL_VIOLATION
    severity = Severity.FATAL


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol; the connection cannot continue.

    `sqlstate` is 08P01 unless a more precise code applies (0A000 for an unsupported protocol
    version, 28000 for a missing user name).
    """


class MalformedCancelRequest(RemoteProtocolError):
    """A CancelRequest of the wrong size.

    Postgres never answers a cancel request, malformed or not: the session closes the connection
    silently instead of sending an ErrorResponse.
    """


class TerminateBeforeStartup(RemoteProtocolError):
    """The client sent Terminate ('X') where a startup packet belongs: it is leaving.

    node-postgres does this when it gives up on a connection before starting up. Postgres reads
    the bytes as an invalid length, logs that and closes without a reply; a reply would only reach
    a client that is gone (or crash one that is not expecting it). The session closes silently.
    """


class InvalidStartupName(RemoteProtocolError):
    """A user or database name pgwarden refuses (too long, or with control characters).

    `sqlstate` is 28000 for a user name and 3D000 for a database name.
    """


class LocalProtocolError(ProtocolError):
    """pgwarden tried to encode a message the protocol cannot represent."""

    sqlstate = sqlstate.INTERNAL_ERROR
