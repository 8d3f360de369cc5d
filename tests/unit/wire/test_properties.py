"""Hypothesis properties: round trips, split invariance (SECURITY.md row 35) and fuzzing.

The fuzz properties feed random and mutated streams to every parser and decoder: whatever the
input, the only exceptions allowed out are ProtocolError subclasses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from functools import partial

from hypothesis import given
from hypothesis import strategies as st

from proxy import wire as w
from proxy.wire.limits import MAX_PREAUTH_MESSAGE_LENGTH
from tests.unit.wire.strategies import (
    SETTINGS,
    backend_messages,
    cancel_requests,
    encryption_requests,
    frontend_messages,
    splits,
    startup_messages,
)

Decoder = Callable[[w.Frame], object]


def read_frames(chunks: Iterable[bytes], max_length: int = 1 << 20) -> list[w.Frame]:
    reader = w.MessageReader(max_length=max_length)
    frames = []
    for chunk in chunks:
        reader.feed(chunk)
        while (frame := reader.next_message()) is not w.NEED_DATA:
            frames.append(frame)
    assert not reader.has_pending_data()
    return frames


def scan_frames(chunks: Iterable[bytes], interesting: bytes) -> tuple[list[w.Frame], int]:
    scanner = w.FrameScanner(interesting, max_length=1 << 20)
    frames = [frame for chunk in chunks for frame in scanner.scan(chunk)]
    assert scanner.buffered == 0
    return frames, scanner.messages_seen


# --- Round trips ----------------------------------------------------------------------------------


@SETTINGS
@given(frontend_messages)
def test_every_frontend_message_round_trips(message: object) -> None:
    (frame,) = read_frames([w.encode(message)])  # type: ignore[arg-type]
    assert w.decode_frontend(frame) == message


@SETTINGS
@given(backend_messages)
def test_every_backend_message_round_trips(message: object) -> None:
    (frame,) = read_frames([w.encode(message)])  # type: ignore[arg-type]
    assert w.decode_backend(frame) == message


@SETTINGS
@given(
    st.one_of(
        st.builds(w.PasswordMessage, st.text().filter(lambda t: "\0" not in t)),
        st.builds(w.SASLInitialResponse, st.just("SCRAM-SHA-256"), st.none() | st.binary()),
        st.builds(w.SASLResponse, st.binary()),
        st.builds(w.GSSResponse, st.binary()),
    )
)
def test_every_auth_response_round_trips_through_its_decoder(message: object) -> None:
    decoders: dict[type, Callable[[bytes], object]] = {
        w.PasswordMessage: w.decode_password_message,
        w.SASLInitialResponse: w.decode_sasl_initial_response,
        w.SASLResponse: w.decode_sasl_response,
        w.GSSResponse: w.decode_gss_response,
    }
    (frame,) = read_frames([w.encode(message)])  # type: ignore[arg-type]
    assert decoders[type(message)](frame.payload) == message


@SETTINGS
@given(startup_messages() | cancel_requests | encryption_requests)
def test_every_startup_packet_round_trips(message: w.StartupRequest) -> None:
    assert w.parse_startup_packet(message.encode()) == message


# --- Split invariance -----------------------------------------------------------------------------


@SETTINGS
@given(st.data(), st.lists(backend_messages, max_size=12))
def test_message_reader_sees_the_same_messages_however_the_stream_is_cut(
    data: st.DataObject, messages: list[object]
) -> None:
    stream = b"".join(w.encode(m) for m in messages)  # type: ignore[arg-type]
    whole = read_frames([stream])
    assert [w.decode_backend(f) for f in whole] == messages
    assert read_frames(stream[i : i + 1] for i in range(len(stream))) == whole
    assert read_frames(data.draw(splits(stream))) == whole


@SETTINGS
@given(st.data(), st.lists(frontend_messages, max_size=12), st.binary(max_size=6))
def test_frame_scanner_agrees_with_message_reader_on_interesting_messages(
    data: st.DataObject, messages: list[object], interesting: bytes
) -> None:
    stream = b"".join(w.encode(m) for m in messages)  # type: ignore[arg-type]
    expected = [f for f in read_frames([stream]) if f.type in interesting]
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        assert scan_frames(chunks, interesting) == (expected, len(messages))
    assert scan_frames(data.draw(splits(stream)), interesting) == (expected, len(messages))


@SETTINGS
@given(st.data(), st.lists(backend_messages, max_size=12))
def test_frame_scanner_tracks_ready_for_query_however_the_stream_is_cut(
    data: st.DataObject, messages: list[object]
) -> None:
    stream = b"".join(w.encode(m) for m in messages)  # type: ignore[arg-type]
    statuses = [m.status for m in messages if isinstance(m, w.ReadyForQuery)]
    scanner = w.FrameScanner(b"Z")
    for chunk in data.draw(splits(stream)):
        scanner.scan(chunk)
    assert scanner.last_ready_status == (statuses[-1] if statuses else None)


def parse_startup(chunks: Iterable[bytes]) -> tuple[list[w.StartupRequest], bytes]:
    parser = w.StartupParser()
    requests: list[w.StartupRequest] = []
    done = False
    for chunk in chunks:
        parser.feed(chunk)
        while not done and (request := parser.next_message()) is not w.NEED_DATA:
            requests.append(request)
            done = isinstance(request, w.StartupMessage | w.CancelRequest)
    return requests, parser.take_pending_data()


@SETTINGS
@given(
    st.data(),
    st.lists(encryption_requests, max_size=3),
    startup_messages() | cancel_requests,
    st.lists(frontend_messages, max_size=3),
)
def test_startup_parser_sees_the_same_packets_however_the_stream_is_cut(
    data: st.DataObject,
    encryption: list[w.StartupRequest],
    last: w.StartupRequest,
    typed: list[object],
) -> None:
    packets = [*encryption, last]
    rest = b"".join(w.encode(m) for m in typed)  # type: ignore[arg-type]
    stream = b"".join(p.encode() for p in packets) + rest
    assert parse_startup([stream]) == (packets, rest)
    assert parse_startup(stream[i : i + 1] for i in range(len(stream))) == (packets, rest)
    assert parse_startup(data.draw(splits(stream))) == (packets, rest)


# --- Fuzzing --------------------------------------------------------------------------------------

AUTH_DECODERS = (
    w.decode_password_message,
    w.decode_sasl_initial_response,
    w.decode_sasl_response,
    w.decode_gss_response,
)


def only_protocol_errors(action: Callable[[], object]) -> None:
    with contextlib.suppress(w.ProtocolError):
        action()


def fuzz_typed(chunks: list[bytes]) -> None:
    reader = w.MessageReader(max_length=MAX_PREAUTH_MESSAGE_LENGTH)
    scanner = w.FrameScanner(b"QZEpRD", max_length=MAX_PREAUTH_MESSAGE_LENGTH)
    for chunk in chunks:
        only_protocol_errors(partial(scanner.scan, chunk))
        reader.feed(chunk)
        while True:
            try:
                frame = reader.next_message()
            except w.ProtocolError:
                return
            if frame is w.NEED_DATA:
                break
            fuzz_frame(frame)


def fuzz_frame(frame: w.Frame) -> None:
    only_protocol_errors(lambda: w.decode_frontend(frame))
    only_protocol_errors(lambda: w.decode_backend(frame))
    for decode in AUTH_DECODERS:
        only_protocol_errors(partial(decode, frame.payload))


def fuzz_startup(chunks: list[bytes]) -> None:
    parser = w.StartupParser()
    try:
        for chunk in chunks:
            parser.feed(chunk)
            while (request := parser.next_message()) is not w.NEED_DATA:
                if isinstance(request, w.StartupMessage):
                    only_protocol_errors(partial(w.login_names, request))
                    w.negotiate_protocol_version(request)
                    return
    except w.ProtocolError:
        pass


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_raise_only_protocol_errors(chunks: list[bytes]) -> None:
    fuzz_typed(chunks)
    fuzz_startup(chunks)
    only_protocol_errors(lambda: w.parse_startup_packet(b"".join(chunks)))


@SETTINGS
@given(st.sampled_from(b"QPBEDCSHFdcfXpRKZNvTGWAt123nsIV"), st.binary(max_size=64))
def test_random_payloads_of_every_type_raise_only_protocol_errors(
    type_byte: int, payload: bytes
) -> None:
    fuzz_frame(w.Frame(type_byte, payload))


@st.composite
def mutated(draw: st.DrawFn, stream: bytes) -> bytes:
    """`stream` with a few bytes flipped, inserted, deleted, or cut off."""
    data = bytearray(stream)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        byte = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01, 0x04, 0x30]))
        if action == "insert":
            data[position:position] = bytes([byte])
        elif position < len(data):
            if action == "flip":
                data[position] = byte
            elif action == "delete":
                del data[position]
            else:
                del data[position:]
    return bytes(data)


@SETTINGS
@given(st.data(), st.lists(frontend_messages | backend_messages, min_size=1, max_size=6))
def test_mutated_message_streams_raise_only_protocol_errors(
    data: st.DataObject, messages: list[object]
) -> None:
    stream = data.draw(mutated(b"".join(w.encode(m) for m in messages)))  # type: ignore[arg-type]
    fuzz_typed(data.draw(splits(stream)))


@SETTINGS
@given(st.data(), startup_messages() | cancel_requests | encryption_requests)
def test_mutated_startup_packets_raise_only_protocol_errors(
    data: st.DataObject, message: w.StartupRequest
) -> None:
    stream = data.draw(mutated(message.encode()))
    fuzz_startup(data.draw(splits(stream)))
    only_protocol_errors(lambda: w.parse_startup_packet(stream))


@SETTINGS
@given(st.text(max_size=80))
def test_name_checks_raise_only_invalid_startup_name(name: str) -> None:
    for check in (w.check_user_name, w.check_database_name):
        with contextlib.suppress(w.InvalidStartupName):
            assert check(name) == name
