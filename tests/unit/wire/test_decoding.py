"""Typed decoders and encoders: SECURITY.md row 5 (inner lengths), trailing bytes, error fields,
and what encoders refuse."""

from __future__ import annotations

import struct

import pytest

from proxy import wire as w
from proxy.errors import PgwardenError
from proxy.wire import payload as payload_module
from proxy.wire import sqlstate
from tests.fixtures.native_mode import pure_only


def i16(value: int) -> bytes:
    return struct.pack("!h", value)


def i32(value: int) -> bytes:
    return struct.pack("!i", value)


def frontend(type_byte: bytes, body: bytes) -> w.FrontendMessage:
    return w.decode_frontend(w.Frame(type_byte[0], body))


def backend(type_byte: bytes, body: bytes) -> w.BackendMessage:
    return w.decode_backend(w.Frame(type_byte[0], body))


SASL = b"SCRAM-SHA-256\0"

# (description, decoder, payload): each payload lies about an inner length or count.
BAD_INNER_LENGTHS = [
    ("SASL data length -2", w.decode_sasl_initial_response, SASL + i32(-2) + b"abc"),
    ("SASL data length huge", w.decode_sasl_initial_response, SASL + i32(2**31 - 1) + b"abc"),
    ("SASL data beyond message", w.decode_sasl_initial_response, SASL + i32(10) + b"abc"),
    ("SASL data shorter than message", w.decode_sasl_initial_response, SASL + i32(2) + b"abc"),
    ("SASL length cut", w.decode_sasl_initial_response, SASL + b"\x00\x00"),
    ("SASL mechanism unterminated", w.decode_sasl_initial_response, b"SCRAM"),
    (
        "Bind parameter length -5",
        lambda p: frontend(b"B", p),
        b"\0\0" + i16(0) + i16(1) + i32(-5) + i16(0),
    ),
    (
        "Bind parameter beyond message",
        lambda p: frontend(b"B", p),
        b"\0\0" + i16(0) + i16(1) + i32(100) + b"ab" + i16(0),
    ),
    ("Bind count beyond message", lambda p: frontend(b"B", p), b"\0\0" + i16(0) + b"\xff\xff"),
    ("Bind format count huge", lambda p: frontend(b"B", p), b"\0\0" + b"\xff\xff" + i16(0)),
    ("DataRow column length -2", lambda p: backend(b"D", p), i16(1) + i32(-2)),
    ("DataRow column beyond message", lambda p: backend(b"D", p), i16(1) + i32(5) + b"abc"),
    ("DataRow count beyond message", lambda p: backend(b"D", p), i16(3) + i32(-1)),
    ("RowDescription count beyond", lambda p: backend(b"T", p), i16(2) + b"a\0" + bytes(18)),
    ("RowDescription field cut", lambda p: backend(b"T", p), i16(1) + b"a\0" + bytes(10)),
    ("ParameterDescription count", lambda p: backend(b"t", p), i16(3) + i32(23)),
    ("Parse type count", lambda p: frontend(b"P", p), b"\0q\0" + i16(2) + i32(23)),
    ("FunctionCall arg length", lambda p: frontend(b"F", p), i32(1) + i16(0) + i16(1) + i32(-3)),
    ("CopyInResponse count", lambda p: backend(b"G", p), b"\0" + i16(4) + i16(0)),
    ("NegotiateProtocolVersion count -1", lambda p: backend(b"v", p), i32(196608) + i32(-1)),
    (
        "NegotiateProtocolVersion count huge",
        lambda p: backend(b"v", p),
        i32(196608) + i32(2**31 - 1),
    ),
    ("MD5 salt short", lambda p: backend(b"R", p), i32(5) + b"abc"),
    ("BackendKeyData key 3 bytes", lambda p: backend(b"K", p), i32(1) + b"abc"),
    ("BackendKeyData key 257 bytes", lambda p: backend(b"K", p), i32(1) + bytes(257)),
    ("BackendKeyData cut", lambda p: backend(b"K", p), b"\0\0"),
]


@pytest.mark.parametrize(
    ("decode", "payload"),
    [pytest.param(d, p, id=name) for name, d, p in BAD_INNER_LENGTHS],
)
def test_inner_length_that_lies_is_a_protocol_violation(decode: object, payload: bytes) -> None:
    with pytest.raises(w.RemoteProtocolError) as info:
        decode(payload)  # type: ignore[operator]
    assert info.value.sqlstate == sqlstate.PROTOCOL_VIOLATION


TRAILING_GARBAGE = [
    (b"Q", b"SELECT 1\0junk", frontend),
    (b"S", b"\0", frontend),
    (b"X", b"x", frontend),
    (b"E", b"\0" + i32(0) + b"!", frontend),
    (b"D", b"Sname\0!", frontend),
    (b"C", b"Pname\0!", frontend),
    (b"f", b"msg\0!", frontend),
    (b"F", i32(1) + i16(0) + i16(0) + i16(0) + b"!", frontend),
    (b"P", b"\0q\0" + i16(0) + b"!", frontend),
    (b"B", b"\0\0" + i16(0) + i16(0) + i16(0) + b"!", frontend),
    (b"R", i32(0) + b"!", backend),
    (b"R", i32(10) + b"SCRAM\0\0!", backend),
    (b"Z", b"II", backend),
    (b"S", b"a\0b\0c", backend),
    (b"C", b"SELECT 1\0!", backend),
    (b"E", b"Mboom\0\0!", backend),
    (b"N", b"\0\0", backend),
    (b"v", i32(196608) + i32(0) + b"!", backend),
    (b"T", i16(0) + b"!", backend),
    (b"D", i16(0) + b"!", backend),
    (b"A", i32(1) + b"c\0p\0!", backend),
    (b"t", i16(0) + b"!", backend),
    (b"1", b"!", backend),
    (b"c", b"!", backend),
    (b"H", b"\0" + i16(0) + b"!", backend),
]


@pytest.mark.parametrize(("type_byte", "payload", "decode"), TRAILING_GARBAGE)
def test_trailing_bytes_after_declared_content_are_a_protocol_violation(
    type_byte: bytes, payload: bytes, decode: object
) -> None:
    with pytest.raises(w.RemoteProtocolError):
        decode(type_byte, payload)  # type: ignore[operator]


def test_trailing_bytes_after_a_password_are_a_protocol_violation() -> None:
    with pytest.raises(w.RemoteProtocolError):
        w.decode_password_message(b"secret\0\0")


@pytest.mark.parametrize(
    ("type_byte", "payload", "decode"),
    [
        (b"Q", b"SELECT 1", frontend),
        (b"E", b"portal", frontend),
        (b"S", b"name\0value", backend),
        (b"C", b"SELECT 1", backend),
        (b"R", i32(10) + b"SCRAM-SHA-256\0", backend),
    ],
)
def test_string_without_terminator_is_a_protocol_violation(
    type_byte: bytes, payload: bytes, decode: object
) -> None:
    with pytest.raises(w.RemoteProtocolError, match="NUL"):
        decode(type_byte, payload)  # type: ignore[operator]


@pytest.mark.parametrize("target", [b"X", b"s", b"\0"])
def test_describe_or_close_of_unknown_target_is_a_protocol_violation(target: bytes) -> None:
    with pytest.raises(w.RemoteProtocolError):
        frontend(b"D", target + b"name\0")
    with pytest.raises(w.RemoteProtocolError):
        frontend(b"C", target + b"name\0")


@pytest.mark.parametrize("payload", [b"", b"X", b"i"])
def test_ready_for_query_with_unknown_status_is_a_protocol_violation(payload: bytes) -> None:
    with pytest.raises(w.RemoteProtocolError):
        backend(b"Z", payload)


# --- ErrorResponse / NoticeResponse ---------------------------------------------------------------


def test_error_response_without_fields_decodes() -> None:
    error = backend(b"E", b"\0")
    assert error == w.ErrorResponse(())
    assert isinstance(error, w.ErrorResponse)
    assert (error.severity, error.sqlstate, error.message) == (None, None, None)


@pytest.mark.parametrize("payload", [b"", b"Mboom\0", b"Mboom", b"M"])
def test_error_response_without_terminator_is_a_protocol_violation(payload: bytes) -> None:
    with pytest.raises(w.RemoteProtocolError):
        backend(b"E", payload)
    with pytest.raises(w.RemoteProtocolError):
        backend(b"N", payload)


def test_error_response_keeps_field_order_and_unknown_fields() -> None:
    error = backend(b"E", b"SERREUR\0VERROR\0C42601\0Msyntax\0Xfuture\0P7\0\0")
    assert isinstance(error, w.ErrorResponse)
    assert [code for code, _ in error.fields] == ["S", "V", "C", "M", "X", "P"]
    assert error.severity == "ERROR"  # the non-localized V wins over the localized S
    assert error.get("X") == "future"
    assert error.get("Z") is None


def test_severity_falls_back_to_the_localized_field_for_old_servers() -> None:
    assert w.ErrorResponse((("S", "FATAL"),)).severity == "FATAL"


def test_fatal_error_carries_what_clients_read() -> None:
    error = w.ErrorResponse.fatal(sqlstate.INVALID_PASSWORD, "password failed", hint="retry")
    assert error.fields == (
        ("S", "FATAL"),
        ("V", "FATAL"),
        ("C", "28P01"),
        ("M", "password failed"),
        ("H", "retry"),
    )
    assert type(error.fields[0][1]) is str
    assert backend(b"E", error.encode()[5:]) == error


def test_error_constructor_is_not_fatal_and_may_carry_detail() -> None:
    error = w.ErrorResponse.error(sqlstate.QUERY_CANCELED, "canceled", detail="by pgwarden")
    assert (error.severity, error.sqlstate, error.get("D")) == ("ERROR", "57014", "by pgwarden")


def test_error_from_pgwarden_error_never_leaks_the_log_detail() -> None:
    exc = PgwardenError("access expired", sqlstate=sqlstate.ADMIN_SHUTDOWN, detail="grant 42 row")
    error = w.ErrorResponse.from_error(exc)
    assert (error.severity, error.sqlstate, error.message) == ("FATAL", "57P01", "access expired")
    assert b"grant 42" not in error.encode()


def test_protocol_error_turns_into_a_fatal_08p01() -> None:
    error = w.ErrorResponse.from_error(w.RemoteProtocolError("bad"))
    assert (error.severity, error.sqlstate) == ("FATAL", "08P01")
    assert w.LocalProtocolError("ours").sqlstate == sqlstate.INTERNAL_ERROR


def test_notice_constructors() -> None:
    assert w.NoticeResponse.warning("01000", "careful").severity == "WARNING"
    notice = w.NoticeResponse.notice("00000", "hello", detail="d")
    assert (notice.severity, notice.message, notice.get("D")) == ("NOTICE", "hello", "d")


# --- Text and opaque payloads ---------------------------------------------------------------------


def test_text_that_is_not_utf8_round_trips_byte_for_byte() -> None:
    wire = b"Q\x00\x00\x00\x0cSELECT\xe9\x00"  # LATIN1 client_encoding
    query = frontend(b"Q", wire[5:])
    assert isinstance(query, w.Query)
    assert query.encode() == wire


def test_unknown_message_keeps_the_payload_object() -> None:
    payload = b"\x00\x00\x00\x01x"
    assert backend(b"V", payload).payload is payload  # type: ignore[union-attr]
    assert frontend(b"?", payload).payload is payload  # type: ignore[union-attr]
    assert backend(b"R", i32(6)) == w.UnknownMessage(ord("R"), i32(6))


def test_copy_data_keeps_the_payload_object() -> None:
    payload = b"row\n"
    assert backend(b"d", payload).data is payload  # type: ignore[union-attr]


def test_auth_response_is_opaque_until_narrowed() -> None:
    wire = w.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=x").encode()
    message = frontend(b"p", wire[5:])
    assert isinstance(message, w.AuthResponse)
    assert w.decode_sasl_initial_response(message.payload).mechanism == "SCRAM-SHA-256"
    # The same bytes are not a valid PasswordMessage: the caller's choice matters.
    with pytest.raises(w.RemoteProtocolError):
        w.decode_password_message(message.payload)


# --- Encoders -------------------------------------------------------------------------------------

UNENCODABLE = [
    w.Query("a\0b"),
    w.Query("\ud800"),
    w.Parse("s", "q", (-1,)),
    w.Parse("s", "q", (0,) * 65536),
    w.Bind("", "", (70000,)),
    w.Execute("", 2**31),
    w.Describe("X", "n"),  # type: ignore[arg-type]
    w.Close("", "n"),  # type: ignore[arg-type]
    w.FunctionCall(-1),
    w.AuthenticationMD5Password(b"abc"),
    w.AuthenticationSASL(("SCRAM-SHA-256", "")),
    w.BackendKeyData(1, b"abc"),
    w.BackendKeyData(1, bytes(257)),
    w.BackendKeyData(2**31, b"abcd"),
    w.ErrorResponse((("", "x"),)),
    w.ErrorResponse((("\0", "x"),)),
    w.ErrorResponse((("MM", "x"),)),
    w.ErrorResponse((("\u0100", "x"),)),
    w.NegotiateProtocolVersion(3, 65536),
    w.CopyInResponse(256, ()),
    w.ReadyForQuery("X"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("message", UNENCODABLE, ids=repr)
def test_unrepresentable_message_raises_local_protocol_error(message: object) -> None:
    with pytest.raises(w.LocalProtocolError):
        w.encode(message)  # type: ignore[arg-type]


@pure_only("patches a module constant, which compiled code has bound")
def test_payload_too_large_for_a_message_is_not_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload_module, "MAX_PAYLOAD_LENGTH", 8)
    assert w.CopyData(b"12345678").encode()
    with pytest.raises(w.LocalProtocolError):
        w.CopyData(b"123456789").encode()
