"""The startup phase: SECURITY.md rows 1-3, 6-8 and the cancel-request rules."""

from __future__ import annotations

import struct
import time

import pytest

from proxy import wire as w
from proxy.wire import sqlstate
from proxy.wire.limits import MAX_STARTUP_PACKET_LENGTH
from proxy.wire.startup import CANCEL_REQUEST_CODE

V3 = b"\x00\x03\x00\x00"


def packet(body: bytes) -> bytes:
    """A startup packet with a correct length field."""
    return struct.pack("!i", len(body) + 4) + body


def parse(data: bytes) -> w.StartupRequest:
    parser = w.StartupParser()
    parser.feed(data)
    message = parser.next_message()
    assert message is not w.NEED_DATA
    return message


def startup(*pairs: tuple[str, str], minor: int = 0) -> w.StartupMessage:
    message = parse(packet(struct.pack("!HH", 3, minor) + _pairs(*pairs)))
    assert isinstance(message, w.StartupMessage)
    return message


def _pairs(*pairs: tuple[str, str]) -> bytes:
    return b"".join(f"{k}\0{v}\0".encode() for k, v in pairs) + b"\0"


def rejects(data: bytes, code: str = sqlstate.PROTOCOL_VIOLATION) -> w.RemoteProtocolError:
    parser = w.StartupParser()
    parser.feed(data)
    with pytest.raises(w.RemoteProtocolError) as info:
        parser.next_message()
    assert info.value.sqlstate == code
    assert info.value.severity == "FATAL"
    return info.value


# --- Row 1: the length word -----------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 4, 7])
def test_startup_packet_shorter_than_8_bytes_is_rejected(length: int) -> None:
    rejects(struct.pack("!i", length) + b"\x00" * 8)


@pytest.mark.parametrize("length", [-1, -(2**31), -8])
def test_startup_packet_with_negative_length_is_rejected(length: int) -> None:
    rejects(struct.pack("!i", length))


def test_startup_packet_longer_than_10000_bytes_is_rejected_before_buffering() -> None:
    parser = w.StartupParser()
    parser.feed(struct.pack("!i", MAX_STARTUP_PACKET_LENGTH + 1))
    # The 4-byte length alone is enough to refuse: nothing of the body was waited for.
    with pytest.raises(w.RemoteProtocolError, match="invalid length of startup packet"):
        parser.next_message()


# A Terminate ('X', length 4) where a startup packet belongs: a client leaving (node-postgres).
TERMINATE_CASES = {
    "terminate_alone": (b"X\0\0\0\x04", w.TerminateBeforeStartup),
    "terminate_and_more": (b"X\0\0\0\x04garbage", w.TerminateBeforeStartup),
    "x_with_another_length": (b"X\0\0\0\x05", w.RemoteProtocolError),
}


@pytest.mark.parametrize(("data", "error"), TERMINATE_CASES.values(), ids=TERMINATE_CASES.keys())
def test_a_terminate_before_startup_is_told_apart_from_an_invalid_length(
    data: bytes, error: type[w.RemoteProtocolError]
) -> None:
    parser = w.StartupParser()
    parser.feed(data)
    with pytest.raises(w.RemoteProtocolError) as info:
        parser.next_message()
    assert type(info.value) is error


def test_a_terminate_split_before_its_last_byte_waits_for_it() -> None:
    parser = w.StartupParser()
    parser.feed(b"X\0\0\0")
    assert parser.next_message() is w.NEED_DATA
    parser.feed(b"\x04")
    with pytest.raises(w.TerminateBeforeStartup):
        parser.next_message()


def test_startup_packet_of_exactly_10000_bytes_is_accepted() -> None:
    body = V3 + b"user\0bob\0options\0"
    body += b"x" * (MAX_STARTUP_PACKET_LENGTH - 4 - len(body) - 2) + b"\0\0"
    message = parse(packet(body))
    assert isinstance(message, w.StartupMessage)
    assert len(message.params["options"]) > 9900


def test_startup_parser_waits_for_the_whole_packet_without_allocating_by_its_length() -> None:
    parser = w.StartupParser()
    parser.feed(struct.pack("!i", MAX_STARTUP_PACKET_LENGTH))
    assert parser.next_message() is w.NEED_DATA
    parser.feed(b"\x00")
    assert parser.next_message() is w.NEED_DATA


def test_startup_parser_errors_are_sticky_and_later_bytes_are_dropped() -> None:
    parser = w.StartupParser()
    parser.feed(struct.pack("!i", 3))
    with pytest.raises(w.RemoteProtocolError) as first:
        parser.next_message()
    parser.feed(b"more")
    with pytest.raises(w.RemoteProtocolError) as second:
        parser.next_message()
    assert second.value is first.value
    assert parser.take_pending_data() == struct.pack("!i", 3)  # b"more" was dropped


def test_complete_packet_with_inconsistent_length_is_rejected() -> None:
    with pytest.raises(w.RemoteProtocolError, match="does not match"):
        w.parse_startup_packet(struct.pack("!i", 20) + V3 + b"\0")
    with pytest.raises(w.RemoteProtocolError, match="incomplete"):
        w.parse_startup_packet(b"\x00\x00\x00")


# --- Row 2: layout --------------------------------------------------------------------------------


def test_startup_packet_without_final_nul_is_rejected() -> None:
    rejects(packet(V3 + b"user\0bob\0"))
    rejects(packet(V3 + b"user\0bob"))


def test_startup_parameter_without_value_is_rejected() -> None:
    rejects(packet(V3 + b"user\0bob\0database\0\0"))
    rejects(packet(V3 + b"user\0\0"))


def test_startup_parameter_with_empty_name_is_rejected() -> None:
    rejects(packet(V3 + b"user\0bob\0\0x\0\0"))


def test_startup_value_that_is_not_utf8_is_rejected() -> None:
    rejects(packet(V3 + b"user\0bob\0application_name\0\xff\xfe\0\0"))
    rejects(packet(V3 + b"user\0b\xc3\0\0"))


def test_duplicate_user_key_is_rejected() -> None:
    error = rejects(packet(V3 + _pairs(("user", "alice"), ("user", "bob"))))
    assert "duplicate" in error.message


def test_duplicate_protocol_option_is_rejected() -> None:
    rejects(packet(V3 + _pairs(("user", "a"), ("_pq_.x", "1"), ("_pq_.x", "2"))))


@pytest.mark.parametrize("pairs", [(), (("database", "db"),), (("user", ""),)])
def test_startup_message_without_user_is_rejected_with_28000(
    pairs: tuple[tuple[str, str], ...],
) -> None:
    rejects(packet(V3 + _pairs(*pairs)), sqlstate.INVALID_AUTHORIZATION_SPECIFICATION)


# --- Row 3: protocol versions ---------------------------------------------------------------------


@pytest.mark.parametrize(("major", "minor"), [(2, 0), (4, 0), (1234, 5681), (0, 0)])
def test_protocol_major_version_other_than_3_is_rejected_with_0a000(major: int, minor: int) -> None:
    error = rejects(
        packet(struct.pack("!HH", major, minor) + _pairs(("user", "u"))),
        sqlstate.FEATURE_NOT_SUPPORTED,
    )
    assert f"{major}.{minor}" in error.message


def test_protocol_3_0_without_options_needs_no_negotiation() -> None:
    assert w.negotiate_protocol_version(startup(("user", "u"))) is None


@pytest.mark.parametrize("minor", [1, 2, 0xFFFF])
def test_newer_minor_version_is_answered_with_one_negotiate_protocol_version(minor: int) -> None:
    message = startup(("user", "u"), minor=minor)
    assert message.protocol_minor == minor
    reply = w.negotiate_protocol_version(message)
    assert reply == w.NegotiateProtocolVersion(3, 0, ())
    # Postgres and libpq carry the whole version code, 3.0 = 196608, not the bare minor.
    assert reply.encode() == b"v\x00\x00\x00\x0c\x00\x03\x00\x00\x00\x00\x00\x00"


def test_protocol_options_are_kept_apart_and_listed_as_unrecognized() -> None:
    message = startup(("user", "u"), ("_pq_.grease", "1"), ("search_path", "x"), ("_pq_.b", ""))
    assert message.parameters == (("user", "u"), ("search_path", "x"))
    assert message.protocol_options == (("_pq_.grease", "1"), ("_pq_.b", ""))
    reply = w.negotiate_protocol_version(message)
    assert reply == w.NegotiateProtocolVersion(3, 0, ("_pq_.grease", "_pq_.b"))


# --- Row 6: names ---------------------------------------------------------------------------------


def test_63_byte_names_are_accepted() -> None:
    names = w.login_names(startup(("user", "u" * 63), ("database", "é" * 31 + "d")))
    assert names == w.LoginNames("u" * 63, "é" * 31 + "d")


@pytest.mark.parametrize("name", ["u" * 64, "é" * 32, "x" * 1000])
def test_user_name_of_64_bytes_or_more_is_rejected_with_28000(name: str) -> None:
    with pytest.raises(w.InvalidStartupName) as info:
        w.login_names(startup(("user", name)))
    assert info.value.sqlstate == sqlstate.INVALID_AUTHORIZATION_SPECIFICATION


def test_database_name_of_64_bytes_or_more_is_rejected_with_3d000() -> None:
    with pytest.raises(w.InvalidStartupName) as info:
        w.login_names(startup(("user", "u"), ("database", "d" * 64)))
    assert info.value.sqlstate == sqlstate.INVALID_CATALOG_NAME


@pytest.mark.parametrize(
    "name",
    ["a\0b", "a\nb", "a\rb", "a\x1b[31m", "a\x7f", "a\x85", "ad\u202emin", "a\u200bb", "a\u2028"],
)
def test_names_with_control_or_invisible_characters_are_rejected(name: str) -> None:
    with pytest.raises(w.InvalidStartupName) as user:
        w.check_user_name(name)
    assert user.value.sqlstate == sqlstate.INVALID_AUTHORIZATION_SPECIFICATION
    with pytest.raises(w.InvalidStartupName) as database:
        w.check_database_name(name)
    assert database.value.sqlstate == sqlstate.INVALID_CATALOG_NAME


def test_control_characters_in_a_startup_user_are_refused_by_login_names() -> None:
    with pytest.raises(w.InvalidStartupName):
        w.login_names(startup(("user", "bob\nadmin")))


def test_empty_names_are_rejected() -> None:
    with pytest.raises(w.InvalidStartupName):
        w.check_user_name("")
    with pytest.raises(w.InvalidStartupName):
        w.check_database_name("")


@pytest.mark.parametrize("pairs", [(("user", "bob"),), (("user", "bob"), ("database", ""))])
def test_missing_or_empty_database_means_the_user_name(pairs: tuple[tuple[str, str], ...]) -> None:
    message = startup(*pairs)
    assert w.effective_database(message) == "bob"
    assert w.login_names(message) == ("bob", "bob")


def test_names_are_matched_exactly() -> None:
    message = startup(("user", "Prod "), ("database", "prod"))
    assert w.login_names(message) == ("Prod ", "prod")


# --- Row 7: pathological options ------------------------------------------------------------------


def test_9kb_options_value_is_kept_raw() -> None:
    value = "-c " + "x" * 9000
    assert startup(("user", "u"), ("options", value)).params["options"] == value


def test_thousands_of_dash_c_options_parse_fast() -> None:
    value = " ".join(["-c="] * 2400)
    data = packet(V3 + _pairs(("user", "u"), ("options", value)))
    started = time.perf_counter()
    for _ in range(200):
        assert parse(data).params["options"] == value  # type: ignore[union-attr]
    assert time.perf_counter() - started < 1.0


def test_thousands_of_parameters_parse_in_linear_time() -> None:
    pairs = [("user", "u")] + [(f"p{i}", "") for i in range(1100)]
    data = packet(V3 + _pairs(*pairs))
    assert len(data) < MAX_STARTUP_PACKET_LENGTH
    started = time.perf_counter()
    for _ in range(50):
        assert len(parse(data).parameters) == 1101  # type: ignore[union-attr]
    assert time.perf_counter() - started < 1.0


def test_packet_of_nuls_is_rejected_quickly() -> None:
    rejects(packet(V3 + b"\0" * 9000))


# --- Row 8: bytes after an encryption request -----------------------------------------------------


@pytest.mark.parametrize("request_", [w.SSLRequest(), w.GSSENCRequest()])
def test_bytes_after_encryption_request_are_reported_pending_and_not_parsed(
    request_: w.SSLRequest | w.GSSENCRequest,
) -> None:
    injected = w.Query("DROP TABLE x").encode()
    parser = w.StartupParser()
    parser.feed(request_.encode() + injected)
    assert parser.next_message() == request_
    assert parser.has_pending_data()


@pytest.mark.parametrize("request_", [w.SSLRequest(), w.GSSENCRequest()])
def test_encryption_request_alone_leaves_nothing_pending(
    request_: w.SSLRequest | w.GSSENCRequest,
) -> None:
    parser = w.StartupParser()
    parser.feed(request_.encode())
    assert parser.next_message() == request_
    assert not parser.has_pending_data()
    # A refused request ('N') is followed by a StartupMessage on the same stream.
    parser.feed(w.StartupMessage((("user", "u"),)).encode())
    assert isinstance(parser.next_message(), w.StartupMessage)


def test_encryption_request_with_extra_length_is_rejected() -> None:
    rejects(struct.pack("!iI", 12, w.SSLRequest.CODE) + b"\0" * 4)


# --- Cancel requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("key_length", [4, 32, 256])
def test_cancel_request_keys_of_4_to_256_bytes_are_accepted(key_length: int) -> None:
    key = bytes(range(256))[:key_length]
    data = struct.pack("!iIi", 12 + key_length, CANCEL_REQUEST_CODE, 99) + key
    assert parse(data) == w.CancelRequest(99, key)


@pytest.mark.parametrize("key_length", [-4, 0, 3, 257, 1000])
def test_cancel_request_of_wrong_length_is_rejected_silently(key_length: int) -> None:
    head = struct.pack("!iI", 12 + key_length, CANCEL_REQUEST_CODE)
    data = head + (struct.pack("!i", 99) + b"k" * key_length)[: max(0, 4 + key_length)]
    error = rejects(data)
    assert isinstance(error, w.MalformedCancelRequest)


def test_startup_phase_ends_after_startup_message_and_hands_over_the_rest() -> None:
    typed = w.PasswordMessage("pw").encode() + w.Query("SELECT 1").encode()
    parser = w.StartupParser()
    parser.feed(w.StartupMessage((("user", "u"),)).encode() + typed)
    assert isinstance(parser.next_message(), w.StartupMessage)
    with pytest.raises(w.LocalProtocolError):
        parser.next_message()
    assert parser.take_pending_data() == typed
    assert not parser.has_pending_data()


def test_startup_phase_ends_after_cancel_request() -> None:
    parser = w.StartupParser()
    parser.feed(w.CancelRequest(1, b"abcd").encode())
    assert isinstance(parser.next_message(), w.CancelRequest)
    with pytest.raises(w.LocalProtocolError):
        parser.next_message()


# --- Encoders -------------------------------------------------------------------------------------


def test_startup_message_accessors() -> None:
    message = w.StartupMessage((("user", "u"), ("database", "d")))
    assert (message.user, message.database) == ("u", "d")
    assert message.params == {"user": "u", "database": "d"}
    with pytest.raises(TypeError):
        message.params["user"] = "root"  # type: ignore[index]
    assert w.StartupMessage(()).database is None


@pytest.mark.parametrize(
    "message",
    [
        w.StartupMessage((("user", "a"), ("user", "b"))),
        w.StartupMessage((("", "a"),)),
        w.StartupMessage((("user", "a\0b"),)),
        w.StartupMessage((("user", "\udcff"),)),
        w.StartupMessage((("_pq_.x", "1"),)),
        w.StartupMessage((("user", "u"),), protocol_options=(("x", "1"),)),
        w.StartupMessage((("options", "x" * 10000),)),
        w.StartupMessage((("user", "u"),), 3, 2**16),
    ],
)
def test_startup_message_that_could_not_round_trip_is_not_encoded(
    message: w.StartupMessage,
) -> None:
    with pytest.raises(w.LocalProtocolError):
        message.encode()


@pytest.mark.parametrize("key", [b"", b"abc", b"k" * 257])
def test_cancel_request_with_invalid_key_is_not_encoded(key: bytes) -> None:
    with pytest.raises(w.LocalProtocolError):
        w.CancelRequest(1, key).encode()
