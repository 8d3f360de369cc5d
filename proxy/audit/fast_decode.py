"""The messages of every round trip, decoded in place for the recorder: Bind, Execute, and the
database's CommandComplete.

`proxy.wire`'s decoders check every field through `PayloadReader`, one method call per field;
for the Bind of each prepared-statement round trip that cost more than the rest of its record.
These read the same fields with `bytes.find` and precompiled structs. Each returns exactly what
the wire decoder returns for a well-formed payload, and hands anything else to it, which raises
the protocol error (a test holds them to the wire decoders, on valid and on broken payloads).
"""

from __future__ import annotations

import struct

from proxy.wire import Bind, CommandComplete, Execute
from proxy.wire.payload import INT32, UINT16, array_layout

_TEXT = ("utf-8", "surrogateescape")
_NULL = -1  # a value length of -1 is SQL NULL


def bind(payload: bytes) -> tuple[str, str, tuple[int, ...], tuple[bytes | None, ...]]:
    """A Bind's portal, statement, parameter formats and values (result formats are checked
    and dropped: the record does not show them)."""
    try:
        portal_end = payload.index(b"\0")
        statement_end = payload.index(b"\0", portal_end + 1)
        at = statement_end + 1
        (count,) = UINT16.unpack_from(payload, at)
        formats: tuple[int, ...] = array_layout("h", count).unpack_from(payload, at + 2)
        at += 2 + 2 * count
        (count,) = UINT16.unpack_from(payload, at)
        at += 2
        values: list[bytes | None] = []
        for _ in range(count):
            (size,) = INT32.unpack_from(payload, at)
            at += 4
            if size == _NULL:
                values.append(None)
                continue
            if size < 0 or at + size > len(payload):
                raise ValueError("a value does not fit")
            values.append(payload[at : at + size])
            at += size
        (count,) = UINT16.unpack_from(payload, at)
        if at + 2 + 2 * count != len(payload):
            raise ValueError("result formats do not end the message")
    except (ValueError, struct.error):
        full = Bind.decode(payload)  # raises the protocol error
        return full.portal, full.statement, full.param_formats, full.params
    portal = payload[:portal_end].decode(*_TEXT)
    return portal, payload[portal_end + 1 : statement_end].decode(*_TEXT), formats, tuple(values)


def execute(payload: bytes) -> tuple[str, int]:
    """An Execute's portal and row limit (0: all rows)."""
    end = payload.find(b"\0")
    if end < 0 or end != len(payload) - 5:  # not one name then an Int32
        full = Execute.decode(payload)  # raises the protocol error
        return full.portal, full.max_rows
    return payload[:end].decode(*_TEXT), INT32.unpack_from(payload, end + 1)[0]


def command_tag(payload: bytes) -> str:
    """A CommandComplete's tag."""
    end = payload.find(b"\0")
    if end < 0 or end != len(payload) - 1:
        return CommandComplete.decode(payload).tag  # raises the protocol error
    return payload[:-1].decode(*_TEXT)
