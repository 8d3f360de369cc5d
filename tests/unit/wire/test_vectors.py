"""Hand-written wire vectors from the "Message Formats" page, checked in both directions.

The bytes are written out by hand, not produced by the encoder: a vector that agrees with a buggy
encoder would prove nothing.
"""

from __future__ import annotations

import pytest

from proxy import wire as w

KEY32 = bytes(range(32))

FRONTEND = [
    (w.Query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
    (
        w.Parse("s1", "SELECT $1", (23,)),
        b"P\x00\x00\x00\x17s1\x00SELECT $1\x00\x00\x01\x00\x00\x00\x17",
    ),
    (
        w.Bind("p", "s1", (1,), (b"\x00\x00\x00\x2a", None), (0,)),
        b"B\x00\x00\x00\x1fp\x00s1\x00\x00\x01\x00\x01\x00\x02"
        b"\x00\x00\x00\x04\x00\x00\x00\x2a\xff\xff\xff\xff\x00\x01\x00\x00",
    ),
    (w.Bind("", ""), b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"),
    (w.Execute("p", 0), b"E\x00\x00\x00\x0ap\x00\x00\x00\x00\x00"),
    (w.Execute("", 100), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x64"),
    (w.Describe("S", "s1"), b"D\x00\x00\x00\x08Ss1\x00"),
    (w.Close("P", ""), b"C\x00\x00\x00\x06P\x00"),
    (w.Sync(), b"S\x00\x00\x00\x04"),
    (w.Flush(), b"H\x00\x00\x00\x04"),
    (
        w.FunctionCall(1598, (1,), (b"\x00\x01", None), 1),
        b"F\x00\x00\x00\x1a\x00\x00\x06\x3e\x00\x01\x00\x01\x00\x02"
        b"\x00\x00\x00\x02\x00\x01\xff\xff\xff\xff\x00\x01",
    ),
    (w.CopyData(b"1\tfoo\n"), b"d\x00\x00\x00\x0a1\tfoo\n"),
    (w.CopyDone(), b"c\x00\x00\x00\x04"),
    (w.CopyFail("abort"), b"f\x00\x00\x00\x0aabort\x00"),
    (w.Terminate(), b"X\x00\x00\x00\x04"),
    (w.AuthResponse(b"secret\x00"), b"p\x00\x00\x00\x0bsecret\x00"),
    (w.UnknownMessage(ord("?"), b"xy"), b"?\x00\x00\x00\x06xy"),
]

BACKEND = [
    (w.AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    (w.AuthenticationKerberosV5(), b"R\x00\x00\x00\x08\x00\x00\x00\x02"),
    (w.AuthenticationCleartextPassword(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
    (
        w.AuthenticationMD5Password(b"\x01\x02\x03\x04"),
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
    ),
    (w.AuthenticationGSS(), b"R\x00\x00\x00\x08\x00\x00\x00\x07"),
    (w.AuthenticationGSSContinue(b"tok"), b"R\x00\x00\x00\x0b\x00\x00\x00\x08tok"),
    (w.AuthenticationSSPI(), b"R\x00\x00\x00\x08\x00\x00\x00\x09"),
    (
        w.AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
        b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
    ),
    (
        w.AuthenticationSASLContinue(b"r=abc,s=c2FsdA==,i=4096"),
        b"R\x00\x00\x00\x1f\x00\x00\x00\x0br=abc,s=c2FsdA==,i=4096",
    ),
    (w.AuthenticationSASLFinal(b"v=xyz"), b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=xyz"),
    (
        w.ParameterStatus("client_encoding", "UTF8"),
        b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00",
    ),
    (
        w.BackendKeyData(1234, b"\x00\x00\x16\x2e"),
        b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\x00\x00\x16\x2e",
    ),
    (w.BackendKeyData(7, KEY32), b"K\x00\x00\x00\x28\x00\x00\x00\x07" + KEY32),
    (w.ReadyForQuery(w.TransactionStatus.IDLE), b"Z\x00\x00\x00\x05I"),
    (w.ReadyForQuery(w.TransactionStatus.IN_TRANSACTION), b"Z\x00\x00\x00\x05T"),
    (w.ReadyForQuery(w.TransactionStatus.FAILED), b"Z\x00\x00\x00\x05E"),
    (
        w.ErrorResponse((("S", "ERROR"), ("C", "42P01"), ("M", "no"))),
        b"E\x00\x00\x00\x17SERROR\x00C42P01\x00Mno\x00\x00",
    ),
    (w.ErrorResponse(()), b"E\x00\x00\x00\x05\x00"),
    (
        w.NoticeResponse((("S", "NOTICE"), ("M", "hi"))),
        b"N\x00\x00\x00\x11SNOTICE\x00Mhi\x00\x00",
    ),
    (
        w.NegotiateProtocolVersion(3, 0, ("_pq_.x",)),
        b"v\x00\x00\x00\x13\x00\x03\x00\x00\x00\x00\x00\x01_pq_.x\x00",
    ),
    (w.CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
    (
        w.RowDescription((w.FieldDescription("id", 16384, 1, 23, 4, -1, 0),)),
        b"T\x00\x00\x00\x1b\x00\x01id\x00\x00\x00\x40\x00\x00\x01"
        b"\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00",
    ),
    (
        w.DataRow((b"42", None, b"")),
        b"D\x00\x00\x00\x14\x00\x03\x00\x00\x00\x0242\xff\xff\xff\xff\x00\x00\x00\x00",
    ),
    (w.CopyInResponse(0, (0, 0)), b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00"),
    (w.CopyOutResponse(1, (1,)), b"H\x00\x00\x00\x09\x01\x00\x01\x00\x01"),
    (w.CopyBothResponse(0, ()), b"W\x00\x00\x00\x07\x00\x00\x00"),
    (w.CopyData(b"row\n"), b"d\x00\x00\x00\x08row\n"),
    (w.CopyDone(), b"c\x00\x00\x00\x04"),
    (
        w.NotificationResponse(42, "chan", "hello"),
        b"A\x00\x00\x00\x13\x00\x00\x00\x2achan\x00hello\x00",
    ),
    (
        w.ParameterDescription((23, 25)),
        b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19",
    ),
    (w.EmptyQueryResponse(), b"I\x00\x00\x00\x04"),
    (w.ParseComplete(), b"1\x00\x00\x00\x04"),
    (w.BindComplete(), b"2\x00\x00\x00\x04"),
    (w.CloseComplete(), b"3\x00\x00\x00\x04"),
    (w.NoData(), b"n\x00\x00\x00\x04"),
    (w.PortalSuspended(), b"s\x00\x00\x00\x04"),
    # FunctionCallResponse and an unknown authentication code stay opaque.
    (w.UnknownMessage(ord("V"), b"\x00\x00\x00\x01x"), b"V\x00\x00\x00\x09\x00\x00\x00\x01x"),
    (w.UnknownMessage(ord("R"), b"\x00\x00\x00\x06"), b"R\x00\x00\x00\x08\x00\x00\x00\x06"),
]

# The `p` family, decoded by the function the authentication state machine picks.
AUTH_RESPONSES = [
    (w.PasswordMessage("secret"), w.decode_password_message, b"p\x00\x00\x00\x0bsecret\x00"),
    (
        w.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
        w.decode_sasl_initial_response,
        b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc",
    ),
    (
        w.SASLInitialResponse("SCRAM-SHA-256", None),
        w.decode_sasl_initial_response,
        b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff",
    ),
    (
        w.SASLResponse(b"c=biws,r=abc,p=xyz"),
        w.decode_sasl_response,
        b"p\x00\x00\x00\x16c=biws,r=abc,p=xyz",
    ),
    (w.GSSResponse(b"\x01\x02"), w.decode_gss_response, b"p\x00\x00\x00\x06\x01\x02"),
]

STARTUP = [
    (w.SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
    (w.GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30"),
    (
        w.CancelRequest(1234, b"\x00\x00\x16\x2e"),
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\x00\x00\x16\x2e",
    ),
    (w.CancelRequest(1234, KEY32), b"\x00\x00\x00\x2c\x04\xd2\x16\x2e\x00\x00\x04\xd2" + KEY32),
    (
        w.StartupMessage((("user", "bob"), ("database", "db"))),
        b"\x00\x00\x00\x1e\x00\x03\x00\x00user\x00bob\x00database\x00db\x00\x00",
    ),
    (
        w.StartupMessage((("user", "bob"),), 3, 2, (("_pq_.foo", "bar"),)),
        b"\x00\x00\x00\x1f\x00\x03\x00\x02user\x00bob\x00_pq_.foo\x00bar\x00\x00",
    ),
]


def _frame(wire: bytes) -> w.Frame:
    reader = w.MessageReader()
    reader.feed(wire)
    frame = reader.next_message()
    assert isinstance(frame, w.Frame)
    assert not reader.has_pending_data()
    return frame


@pytest.mark.parametrize(("message", "wire"), FRONTEND, ids=lambda v: type(v).__name__)
def test_frontend_message_matches_its_documented_bytes(message: object, wire: bytes) -> None:
    assert w.encode(message) == wire  # type: ignore[arg-type]
    assert w.decode_frontend(_frame(wire)) == message


@pytest.mark.parametrize(("message", "wire"), BACKEND, ids=lambda v: type(v).__name__)
def test_backend_message_matches_its_documented_bytes(message: object, wire: bytes) -> None:
    assert w.encode(message) == wire  # type: ignore[arg-type]
    assert w.decode_backend(_frame(wire)) == message


# Ids name the decoder by name, not by its repr (an address differs between processes: xdist).
@pytest.mark.parametrize(
    ("message", "decode", "wire"), AUTH_RESPONSES, ids=lambda v: getattr(v, "__name__", repr(v))
)
def test_auth_response_matches_its_documented_bytes(
    message: object, decode: object, wire: bytes
) -> None:
    frame = _frame(wire)
    assert w.encode(message) == wire  # type: ignore[arg-type]
    assert w.decode_frontend(frame) == w.AuthResponse(frame.payload)
    assert decode(frame.payload) == message  # type: ignore[operator]


@pytest.mark.parametrize(("message", "wire"), STARTUP, ids=lambda v: type(v).__name__)
def test_startup_packet_matches_its_documented_bytes(message: object, wire: bytes) -> None:
    assert w.encode(message) == wire  # type: ignore[arg-type]
    parser = w.StartupParser()
    parser.feed(wire)
    assert parser.next_message() == message
    assert not parser.has_pending_data()


def test_every_message_type_has_a_vector() -> None:
    covered = {type(m) for m, _ in FRONTEND + BACKEND + STARTUP}
    covered |= {type(m) for m, _, _ in AUTH_RESPONSES}
    exported = [getattr(w, name) for name in w.__all__]
    message_types = {
        obj for obj in exported if hasattr(obj, "__dataclass_fields__") and hasattr(obj, "encode")
    }
    assert message_types - covered == set()
