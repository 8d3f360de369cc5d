"""`fast_decode` reads Bind, Execute and CommandComplete exactly as `proxy.wire` does.

For any well-formed message the fields are the wire decoder's; for any payload at all — cut
short, padded, corrupted, random — either both decoders give the same fields or both raise the
protocol error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit import fast_decode
from proxy.wire import Bind, CommandComplete, Execute, RemoteProtocolError, encode
from tests.fixtures.examples import examples

NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=8)
VALUES = st.lists(st.none() | st.binary(max_size=12), max_size=6).map(tuple)
FORMATS = st.lists(st.integers(-(2**15), 2**15 - 1), max_size=6).map(tuple)
BINDS = st.builds(Bind, NAMES, NAMES, FORMATS, VALUES, FORMATS)
EXECUTES = st.builds(Execute, NAMES, st.integers(-(2**31), 2**31 - 1))
TAGS = st.builds(CommandComplete, NAMES)


def payload(message: Any) -> bytes:
    return bytes(encode(message)[5:])


def wire_bind(data: bytes) -> tuple[object, ...]:
    bind = Bind.decode(data)
    return bind.portal, bind.statement, bind.param_formats, bind.params


def wire_execute(data: bytes) -> tuple[object, ...]:
    execute = Execute.decode(data)
    return execute.portal, execute.max_rows


def outcome(decode: Callable[[bytes], object], data: bytes) -> object:
    try:
        return decode(data)
    except RemoteProtocolError:
        return RemoteProtocolError


@settings(max_examples=examples(300))
@given(BINDS, EXECUTES, TAGS)
def test_well_formed_messages_decode_to_the_wire_decoders_fields(
    bind: Bind, execute: Execute, tag: CommandComplete
) -> None:
    assert fast_decode.bind(payload(bind)) == wire_bind(payload(bind))
    assert fast_decode.execute(payload(execute)) == wire_execute(payload(execute))
    assert fast_decode.command_tag(payload(tag)) == tag.tag


def mangled(message: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """A message's payload cut, extended or with one byte changed; or random bytes."""
    whole = message.map(payload)
    cut = st.tuples(whole, st.integers(0, 64)).map(lambda p: p[0][: p[1]])
    longer = st.tuples(whole, st.binary(min_size=1, max_size=4)).map(lambda p: p[0] + p[1])
    flipped = st.tuples(whole, st.integers(0, 63), st.integers(0, 255)).map(
        lambda p: p[0][: p[1]] + bytes([p[2]]) + p[0][p[1] + 1 :]
    )
    return cut | longer | flipped | st.binary(max_size=40)


@settings(max_examples=examples(500))
@given(mangled(BINDS), mangled(EXECUTES), mangled(TAGS))
def test_any_payload_decodes_alike_or_fails_alike(bind: bytes, execute: bytes, tag: bytes) -> None:
    assert outcome(fast_decode.bind, bind) == outcome(wire_bind, bind)
    assert outcome(fast_decode.execute, execute) == outcome(wire_execute, execute)
    wire_tag = outcome(lambda data: CommandComplete.decode(data).tag, tag)
    assert outcome(fast_decode.command_tag, tag) == wire_tag
