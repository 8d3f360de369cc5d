"""Raw-socket attacks on pgwarden's startup phase: SECURITY.md rows 1, 2, 3, 6, 7, 8 and 11.

Each test sends bytes no well-behaved client would, then checks the exact end of the connection
(one FATAL ErrorResponse with the row's SQLSTATE, then EOF), that nothing reached the database,
that no pre-auth slot is left held, and that a real login works right after.
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import Callable

import pytest

from proxy.auth import ScramClient
from proxy.net.certs import DevCertificates
from tests.fixtures.adversary import (
    FEATURE_NOT_SUPPORTED,
    GSSENC_REQUEST,
    INVALID_AUTHORIZATION,
    INVALID_CATALOG_NAME,
    INVALID_PASSWORD,
    PROTOCOL_VIOLATION,
    SSL_REQUEST,
    Credential,
    UpstreamSpy,
    assert_clean_rejection,
    connect,
    expect_fatal,
    first_value,
    login_raw,
    pairs_body,
    read_sasl_request,
    reply_prefix,
    scram_first,
    scram_login,
    simple_query,
    startup_packet,
    typed,
    version_code,
    wait_for_quiet_database,
)
from tests.fixtures.pgwarden import (
    RO_ROLE,
    RunningPgwarden,
)
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.rawpg import PROTOCOL_3_0, RawPg

pytestmark = pytest.mark.integration

ALICE = {"user": "alice", "database": "orders"}


def fail_scram(conn: RawPg, code: str) -> dict[str, str]:
    """Go through a whole SCRAM exchange with a wrong password; expect FATAL `code`."""
    mechanisms, _ = read_sasl_request(conn)
    final = scram_first(conn, ScramClient("", "not-the-password"), mechanisms)
    conn.send(b"p", final)
    return expect_fatal(conn, code)


# --- row 1: startup packet length --------------------------------------------------------------

BAD_STARTUP_LENGTHS = {
    "zero": 0,
    "four": 4,
    "seven": 7,
    "negative_one": 0xFFFFFFFF,
    "negative_min": 0x80000000,
    "just_above_10000": 10001,
    "two_gigabytes": 0x7FFFFFF0,
}


@pytest.mark.parametrize("length", BAD_STARTUP_LENGTHS.values(), ids=BAD_STARTUP_LENGTHS.keys())
def test_startup_length_outside_8_to_10000_is_refused_before_any_body_is_read(
    pgwarden: RunningPgwarden, clean: Callable[[], None], length: int
) -> None:
    with connect(pgwarden.port) as conn:
        # Only the 8-byte head: pgwarden must decide on the length field, not wait for the body.
        conn.send_raw(struct.pack("!II", length, PROTOCOL_3_0))
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


def test_startup_packet_of_exactly_10000_bytes_is_read(
    pgwarden: RunningPgwarden, clean: Callable[[], None]
) -> None:
    head = startup_packet({**ALICE, "application_name": ""})
    packet = startup_packet({**ALICE, "application_name": "x" * (10000 - len(head))})
    assert len(packet) == 10000
    with connect(pgwarden.port) as conn:
        conn.send_raw(packet)
        assert read_sasl_request(conn)[0]
    clean()


# --- row 2: malformed startup packet bodies ----------------------------------------------------

MALFORMED_BODIES = {
    "no_final_nul": pairs_body([(b"user", b"alice"), (b"database", b"orders")], terminator=False),
    "last_value_unterminated": b"user\0alice\0database\0orders",
    "key_without_value": b"user\0alice\0database\0\0",
    "non_utf8_value": pairs_body([(b"user", b"alice"), (b"application_name", b"\xff\xfe")]),
    "non_utf8_user": pairs_body([(b"user", b"al\xc3ice")]),
    "duplicate_user": pairs_body([(b"user", b"alice"), (b"user", b"bob")]),
    "duplicate_user_same_value": pairs_body([(b"user", b"alice"), (b"user", b"alice")]),
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_malformed_startup_message_is_refused_08P01(
    pgwarden: RunningPgwarden, clean: Callable[[], None], body: bytes
) -> None:
    with connect(pgwarden.port) as conn:
        conn.send_raw(startup_packet(body=body))
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


# --- row 3: protocol versions ------------------------------------------------------------------


@pytest.mark.parametrize("major", [1, 2, 4, 0xFFFF])
def test_protocol_major_version_other_than_3_is_refused_0A000(
    pgwarden: RunningPgwarden, clean: Callable[[], None], major: int
) -> None:
    with connect(pgwarden.port) as conn:
        conn.send_raw(startup_packet(ALICE, version=version_code(major, 0)))
        expect_fatal(conn, FEATURE_NOT_SUPPORTED)
    clean()


NEGOTIATIONS = {
    "minor_3_5": (5, {}),
    "pq_option": (0, {"_pq_.foo": "bar"}),
    "minor_and_options": (2, {"_pq_.foo": "x", "_pq_.test_protocol_negotiation": ""}),
}


@pytest.mark.parametrize(("minor", "options"), NEGOTIATIONS.values(), ids=NEGOTIATIONS.keys())
def test_newer_minor_or_protocol_options_get_one_negotiation_then_a_normal_login(
    pgwarden: RunningPgwarden,
    spy: UpstreamSpy,
    credential: Credential,
    minor: int,
    options: dict[str, str],
) -> None:
    user, password = credential
    session = login_raw(
        pgwarden.port, user, password, params=options, version=version_code(3, minor)
    )
    try:
        assert len(session.negotiations) == 1
        body = session.negotiations[0]
        version, count = struct.unpack("!Ii", body[:8])
        assert version == version_code(3, 0)  # newest minor we speak: 0
        assert count == len(options)
        assert [name.decode() for name in body[8:].split(b"\0")[:-1]] == list(options)
        assert all(type_ != b"v" for type_, _ in session.greeting)
        assert first_value(simple_query(session.conn, "SELECT current_user")) == RO_ROLE
    finally:
        session.close()
    assert spy.roles == [RO_ROLE]


# --- row 6: user and database names ------------------------------------------------------------

BAD_USER_NAMES = {
    "64_bytes": "a" * 64,
    "64_bytes_in_32_chars": "é" * 32,
    "66_bytes_in_22_chars": "€" * 22,
    "newline": "ali\nce",
    "carriage_return": "alice\r",
    "control_char": "ali\x01ce",
    "escape": "\x1b[31malice",
    "delete": "alice\x7f",
    "bidi_override": "alice\u202e",
    "zero_width_space": "al\u200bice",
}


@pytest.mark.parametrize("user", BAD_USER_NAMES.values(), ids=BAD_USER_NAMES.keys())
def test_user_name_too_long_or_with_control_characters_is_refused_28000(
    pgwarden: RunningPgwarden, clean: Callable[[], None], user: str
) -> None:
    with connect(pgwarden.port) as conn:
        conn.send_raw(startup_packet({"user": user, "database": "orders"}))
        expect_fatal(conn, INVALID_AUTHORIZATION)
    clean()


@pytest.mark.parametrize("database", BAD_USER_NAMES.values(), ids=BAD_USER_NAMES.keys())
def test_database_name_too_long_or_with_control_characters_is_refused_3D000(
    pgwarden: RunningPgwarden, clean: Callable[[], None], database: str
) -> None:
    with connect(pgwarden.port) as conn:
        conn.send_raw(startup_packet({"user": "alice", "database": database}))
        expect_fatal(conn, INVALID_CATALOG_NAME)
    clean()


def test_user_name_defaulting_the_database_is_checked_as_a_database_name(
    pgwarden: RunningPgwarden, clean: Callable[[], None]
) -> None:
    # No database: Postgres means db = user. A 63-byte user is fine, and so is the database.
    with connect(pgwarden.port) as conn:
        conn.send_raw(startup_packet({"user": "u" * 63}))
        fail_scram(conn, INVALID_PASSWORD)
    clean()


NAMES_OF_63_BYTES = {
    "user_ascii": {"user": "a" * 63, "database": "orders"},
    "user_multibyte": {"user": "€" * 21, "database": "orders"},
    "database_ascii": {"user": "alice", "database": "d" * 63},
}


@pytest.mark.parametrize("params", NAMES_OF_63_BYTES.values(), ids=NAMES_OF_63_BYTES.keys())
def test_63_byte_names_are_processed_normally_and_fail_authentication(
    pgwarden: RunningPgwarden, clean: Callable[[], None], params: dict[str, str]
) -> None:
    with connect(pgwarden.port) as conn:
        conn.send_raw(startup_packet(params))
        fields = fail_scram(conn, INVALID_PASSWORD)
    assert fields["M"] == f'password authentication failed for user "{params["user"]}"'
    clean()


# --- row 7: pathological options: refused, or passed on, in linear time ------------------------

MALFORMED_OPTIONS = {
    "c_equals": "-c=",
    "c_equals_repeated": "-c= " * 2000,
    "thousands_of_bare_c": "-c" * 4000,
    "nine_kb_of_escapes": "\\" * 9000,
}


@pytest.mark.parametrize("options", MALFORMED_OPTIONS.values(), ids=MALFORMED_OPTIONS.keys())
def test_malformed_options_are_refused_with_a_short_42601(
    pgwarden: RunningPgwarden, spy: UpstreamSpy, options: str
) -> None:
    with connect(pgwarden.port) as conn:
        conn.send_raw(startup_packet({**ALICE, "options": options}))
        fields = expect_fatal(conn, "42601")
    assert len(fields["M"]) < 120, fields["M"]  # names the word, never echoes kilobytes
    assert spy.roles == []


WELL_FORMED_OPTIONS = {
    "thousands_of_c": (" ".join(["-c x.y=z"] * 1000), ("x.y", "z")),
    "nine_kb_value": ("-c search_path=" + "s" * 9000, ("search_path", "s" * 9000)),
}


@pytest.mark.parametrize(
    ("options", "expected"), WELL_FORMED_OPTIONS.values(), ids=WELL_FORMED_OPTIONS.keys()
)
def test_pathological_but_well_formed_options_reach_the_database(
    pgwarden: RunningPgwarden, spy: UpstreamSpy, credential: Credential,
    options: str, expected: tuple[str, str],
) -> None:  # fmt: skip
    name, value = expected
    user, password = credential
    session = login_raw(pgwarden.port, user, password, params={"options": options})
    try:
        shown = simple_query(session.conn, f"SELECT current_setting('{name}')")
        assert first_value(shown) == value
    finally:
        session.close()
    assert spy.roles == [RO_ROLE]


# --- row 8: bytes after SSLRequest / GSSENCRequest (no certificate: we answer N) ----------------

INJECTIONS = {
    "startup_message": startup_packet(ALICE),
    "query": typed(b"Q", b"SELECT 1\0"),
    "one_byte": b"\0",
    "second_ssl_request": SSL_REQUEST,
}


def check_refused_after_request(conn: RawPg, request: bytes) -> None:
    fields = expect_fatal(conn, PROTOCOL_VIOLATION)
    what = "SSL request" if request == SSL_REQUEST else "GSSENC"
    assert f"received unencrypted data after {what}" in fields["M"], fields


@pytest.mark.parametrize("extra", INJECTIONS.values(), ids=INJECTIONS.keys())
@pytest.mark.parametrize("request_", [SSL_REQUEST, GSSENC_REQUEST], ids=["ssl", "gssenc"])
def test_bytes_after_encryption_request_are_refused_unparsed_without_certificate(
    pgwarden: RunningPgwarden, clean: Callable[[], None], request_: bytes, extra: bytes
) -> None:
    assert pgwarden.runtime.server.ctx.client_tls is None
    with connect(pgwarden.port) as conn:
        conn.send_raw(request_ + extra)  # one send: both arrive before our answer
        check_refused_after_request(conn, request_)
    clean()


def test_plain_ssl_request_without_certificate_is_answered_n_then_login_works(
    pgwarden: RunningPgwarden, credential: Credential
) -> None:
    with connect(pgwarden.port) as conn:
        conn.send_raw(SSL_REQUEST)
        assert reply_prefix(conn) == b"N"
        conn.send_raw(startup_packet(ALICE))
        scram_login(conn, credential[1]).close()


# --- rows 8 and 11 with a certificate ----------------------------------------------------------


@pytest.fixture(scope="module")
def tls_credential(tls_pgwarden: RunningPgwarden) -> Credential:
    issued = tls_pgwarden.grant()
    return issued.username, issued.password


@pytest.fixture
def tls_clean(
    tls_pgwarden: RunningPgwarden,
    spy: UpstreamSpy,
    postgres: PostgresServer,
    tls_credential: Credential,
) -> Callable[[], None]:
    wait_for_quiet_database(postgres)
    return lambda: assert_clean_rejection(tls_pgwarden, spy, postgres, tls_credential)


def start_tls(conn: RawPg, certificates: DevCertificates) -> RawPg:
    """SSLRequest, 'S', and a verified TLS handshake: the same connection, encrypted."""
    conn.send_raw(SSL_REQUEST)
    assert reply_prefix(conn) == b"S"
    context = ssl.create_default_context(cafile=str(certificates.ca_cert))
    return RawPg(context.wrap_socket(conn.sock, server_hostname="127.0.0.1"))


@pytest.mark.parametrize("extra", INJECTIONS.values(), ids=INJECTIONS.keys())
@pytest.mark.parametrize("request_", [SSL_REQUEST, GSSENC_REQUEST], ids=["ssl", "gssenc"])
def test_bytes_after_encryption_request_are_refused_unparsed_with_certificate(
    tls_pgwarden: RunningPgwarden, tls_clean: Callable[[], None], request_: bytes, extra: bytes
) -> None:
    assert tls_pgwarden.runtime.server.ctx.client_tls is not None
    with connect(tls_pgwarden.port) as conn:
        conn.send_raw(request_ + extra)  # before our 'S': a man in the middle's bytes
        check_refused_after_request(conn, request_)
    tls_clean()


def test_tls_login_works_on_the_certificate_pgwarden(
    tls_pgwarden: RunningPgwarden, tls_credential: Credential, certificates: DevCertificates
) -> None:
    with start_tls(connect(tls_pgwarden.port), certificates) as conn:
        conn.send_raw(startup_packet(ALICE))
        session = scram_login(conn, tls_credential[1])
        assert first_value(simple_query(session.conn, "SELECT 1")) == "1"
        session.close()


@pytest.mark.parametrize("after", [b"", startup_packet(ALICE)], ids=["alone", "with_startup"])
def test_second_ssl_request_inside_tls_is_refused_08P01(
    tls_pgwarden: RunningPgwarden,
    tls_clean: Callable[[], None],
    certificates: DevCertificates,
    after: bytes,
) -> None:
    with start_tls(connect(tls_pgwarden.port), certificates) as conn:
        conn.send_raw(SSL_REQUEST + after)
        expect_fatal(conn, PROTOCOL_VIOLATION)
    tls_clean()
