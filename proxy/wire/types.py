"""The message type bytes, named as in the PostgreSQL "Message Formats" page: the one place in
pgwarden where they are spelled out.

Every typed message starts with one byte that names it. The same byte means different messages in
each direction (`D` is Describe from a client and DataRow from a server), so each name says the
message, not the letter, and the constants are grouped by who sends them.

They are ints, because a frame's `type` is an int (one byte of `bytes`, indexed) and the relay
compares it once per message against module-level ints. The only bytes written raw, outside any
message, are the one-byte answers to SSLRequest and GSSENCRequest: those are `bytes`.
"""

from __future__ import annotations

from typing import Final

# --- Sent by the frontend (F) ---------------------------------------------------------------------

BIND: Final = ord("B")
CLOSE: Final = ord("C")
DESCRIBE: Final = ord("D")
EXECUTE: Final = ord("E")
FLUSH: Final = ord("H")
FUNCTION_CALL: Final = ord("F")
PARSE: Final = ord("P")
# PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse all share `p`: only the state
# of the authentication exchange says which one it is.
PASSWORD_MESSAGE: Final = ord("p")
QUERY: Final = ord("Q")
SYNC: Final = ord("S")
TERMINATE: Final = ord("X")
COPY_FAIL: Final = ord("f")

# --- Sent by both (F & B) -------------------------------------------------------------------------

COPY_DATA: Final = ord("d")
COPY_DONE: Final = ord("c")

# --- Sent by the backend (B) ----------------------------------------------------------------------

# Every authentication request (AuthenticationOk, AuthenticationSASL...) shares `R`; an Int32 code
# in the payload tells them apart.
AUTHENTICATION: Final = ord("R")
BACKEND_KEY_DATA: Final = ord("K")
BIND_COMPLETE: Final = ord("2")
CLOSE_COMPLETE: Final = ord("3")
COMMAND_COMPLETE: Final = ord("C")
COPY_IN_RESPONSE: Final = ord("G")
COPY_OUT_RESPONSE: Final = ord("H")
COPY_BOTH_RESPONSE: Final = ord("W")
DATA_ROW: Final = ord("D")
EMPTY_QUERY_RESPONSE: Final = ord("I")
ERROR_RESPONSE: Final = ord("E")
FUNCTION_CALL_RESPONSE: Final = ord("V")
NEGOTIATE_PROTOCOL_VERSION: Final = ord("v")
NO_DATA: Final = ord("n")
NOTICE_RESPONSE: Final = ord("N")
NOTIFICATION_RESPONSE: Final = ord("A")
PARAMETER_DESCRIPTION: Final = ord("t")
PARAMETER_STATUS: Final = ord("S")
PARSE_COMPLETE: Final = ord("1")
PORTAL_SUSPENDED: Final = ord("s")
READY_FOR_QUERY: Final = ord("Z")
ROW_DESCRIPTION: Final = ord("T")

# --- The one-byte answers to SSLRequest and GSSENCRequest (no length, no payload) -----------------
# A server may also answer SSLRequest with an ErrorResponse (first byte ERROR_RESPONSE).

SSL_ACCEPTED: Final = b"S"
SSL_REFUSED: Final = b"N"
GSSENC_ACCEPTED: Final = b"G"
GSSENC_REFUSED: Final = b"N"
