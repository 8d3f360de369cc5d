"""Every size the wire codec accepts, with the reason for it.

The codec never allocates by a length the peer declared: each length is checked against one of
these limits first, so a hostile peer cannot make pgwarden buffer more than the limit of the phase
it is in. All lengths are in bytes.
"""

from __future__ import annotations

from typing import Final

# --- Startup phase (untyped packets) -------------------------------------------------------------

# The largest startup packet, counted as its length field counts it (including the field itself).
# Postgres uses the same 10000 (MAX_STARTUP_PACKET_LENGTH in pqcomm.h); it compares the body, so it
# admits 4 bytes more, which no real client needs. A startup packet holds only names and options.
MAX_STARTUP_PACKET_LENGTH: Final = 10000

# The smallest startup packet: the length field and a 4-byte protocol version or request code.
MIN_STARTUP_PACKET_LENGTH: Final = 8

# SSLRequest and GSSENCRequest are exactly a length and a request code.
ENCRYPTION_REQUEST_LENGTH: Final = 8

# CancelRequest: length, request code, process id, then the secret key. Protocol 3.0 keys are
# 4 bytes; protocol 3.2 made the key variable, 4 to 256 bytes ("The minimum and maximum key length
# are 4 and 256 bytes", Message Formats, BackendKeyData). A cancel arrives on a fresh connection,
# so its protocol version is unknown: accept the union.
MIN_CANCEL_KEY_LENGTH: Final = 4
MAX_CANCEL_KEY_LENGTH: Final = 256
CANCEL_REQUEST_HEADER_LENGTH: Final = 12

# --- Typed phase ----------------------------------------------------------------------------------

# Limits on typed messages bound the payload: the length field minus its own 4 bytes, the quantity
# Postgres' pq_getmessage(maxlen) compares.

# Before authentication completes Postgres reads every message with maxlen PG_MAX_AUTH_TOKEN_LENGTH
# (65535): an anonymous peer gets no more buffer than a password or SASL message can need.
MAX_PREAUTH_MESSAGE_LENGTH: Final = 65535

# After authentication: Postgres' PQ_LARGE_MESSAGE_LIMIT is MaxAllocSize - 1 (1 GiB - 2), the
# largest palloc. A client may legitimately send a query or a COPY row that large; pgwarden can
# configure a lower cap per MessageReader.
DEFAULT_MAX_MESSAGE_LENGTH: Final = 0x3FFFFFFF - 1

# The length field is a signed Int32: anything at or above 2**31 is negative to every peer, and a
# payload must leave room for the 4 bytes of the field. No configured limit may exceed this.
MAX_PAYLOAD_LENGTH: Final = 0x7FFFFFFF - 4

# A message header: one type byte and the Int32 length.
HEADER_LENGTH: Final = 5

# The smallest value of a typed length field: the field itself and an empty payload.
MIN_MESSAGE_LENGTH: Final = 4

# --- Values inside messages -----------------------------------------------------------------------

# NAMEDATALEN - 1: the longest role or database name. Postgres silently truncates longer names in
# the startup packet; pgwarden refuses them, so the name it authorizes is the name it connects to.
MAX_IDENTIFIER_BYTES: Final = 63

# Counts in messages (parameters, columns, format codes) are Int16 that Postgres reads as unsigned
# (pq_getmsgint(msg, 2)); libpq allows up to 65535 bind parameters (PQ_QUERY_PARAM_MAX_LIMIT).
MAX_COUNT: Final = 0xFFFF

# --- Buffers --------------------------------------------------------------------------------------

# A receive buffer drops its consumed prefix once the prefix exceeds this many bytes and half the
# buffer: a memmove per 64 KiB consumed keeps byte-by-byte feeding linear without pinning memory.
BUFFER_COMPACT_THRESHOLD: Final = 65536
