"""Raw-socket attacks on pgwarden's authentication phase: SECURITY.md rows 4, 5, 13 and 25.

The attacker has sent a valid StartupMessage and is now inside the SCRAM exchange: it sends typed
messages with impossible lengths, SASL messages whose inner lengths lie, messages of the wrong
kind at the wrong time, and queries pipelined behind its password. Each must end with one FATAL
ErrorResponse and EOF, with nothing forwarded to the database before a successful login.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable

import pytest

from proxy.auth import ScramClient
from tests.fixtures.adversary import (
    INVALID_PASSWORD,
    PROTOCOL_VIOLATION,
    Credential,
    UpstreamSpy,
    connect,
    count_items,
    expect_closed,
    expect_fatal,
    first_value,
    query_message,
    read_sasl_request,
    sasl_initial,
    scram_first,
    scram_login,
    simple_query,
    startup_packet,
    typed,
)
from tests.fixtures.pgwarden import RW_ROLE, RunningPgwarden
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.rawpg import RawPg, cstring, error_fields

pytestmark = pytest.mark.integration

ALICE = {"user": "alice", "database": "orders"}
BOB = {"user": "bob", "database": "orders"}
CLIENT_FIRST = b"n,,n=,r=0123456789abcdefghijklmn"


@pytest.fixture(scope="module")
def rw_credential(pgwarden: RunningPgwarden) -> Credential:
    issued = pgwarden.grant(user="bob", level="read-write")
    return issued.username, issued.password


def start_sasl(pgwarden: RunningPgwarden, params: dict[str, str] = ALICE) -> RawPg:
    """A connection that sent its StartupMessage and received AuthenticationSASL."""
    conn = connect(pgwarden.port)
    conn.send_raw(startup_packet(params))
    assert "SCRAM-SHA-256" in read_sasl_request(conn)[0]
    return conn


def start_sasl_continue(pgwarden: RunningPgwarden, password: str) -> tuple[RawPg, bytes]:
    """A connection past SASLContinue; and the client-final message it would send next."""
    conn = connect(pgwarden.port)
    conn.send_raw(startup_packet(ALICE))
    mechanisms, _ = read_sasl_request(conn)
    return conn, scram_first(conn, ScramClient("", password), mechanisms)


# --- row 4: typed message lengths before authentication ----------------------------------------

BAD_TYPED_LENGTHS = {
    "zero": 0,
    "three": 3,
    "all_ones": 0xFFFFFFFF,
    "exactly_2_31": 0x80000000,
    "above_2_31": 0x80000001,
    "payload_65536": 65536 + 4,
    "one_mebibyte": 1 << 20,
}


@pytest.mark.parametrize("length", BAD_TYPED_LENGTHS.values(), ids=BAD_TYPED_LENGTHS.keys())
@pytest.mark.parametrize("type_", [b"p", b"Q"], ids=["password", "query"])
def test_bad_length_in_place_of_sasl_initial_response_is_refused_before_the_body(
    pgwarden: RunningPgwarden, clean: Callable[[], None], type_: bytes, length: int
) -> None:
    with start_sasl(pgwarden) as conn:
        conn.send_raw(type_ + struct.pack("!I", length))  # the header only, never a body
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


@pytest.mark.parametrize("length", BAD_TYPED_LENGTHS.values(), ids=BAD_TYPED_LENGTHS.keys())
def test_bad_length_in_place_of_sasl_response_is_refused_before_the_body(
    pgwarden: RunningPgwarden, clean: Callable[[], None], credential: Credential, length: int
) -> None:
    conn, _ = start_sasl_continue(pgwarden, credential[1])
    with conn:
        conn.send_raw(b"p" + struct.pack("!I", length))
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


# --- row 5: inner lengths of SASLInitialResponse -----------------------------------------------

INNER_LENGTHS = {
    "null": (-1, CLIENT_FIRST),
    "minus_two": (-2, CLIENT_FIRST),
    "int32_min": (-(2**31), CLIENT_FIRST),
    "huge": (2**31 - 1, CLIENT_FIRST),
    "one_beyond_message": (len(CLIENT_FIRST) + 1, CLIENT_FIRST),
    "short_of_message": (len(CLIENT_FIRST) - 1, CLIENT_FIRST),
    "zero_with_data": (0, CLIENT_FIRST),
}


@pytest.mark.parametrize(("declared", "data"), INNER_LENGTHS.values(), ids=INNER_LENGTHS.keys())
def test_sasl_initial_response_with_a_lying_data_length_is_refused_08P01(
    pgwarden: RunningPgwarden, clean: Callable[[], None], declared: int, data: bytes
) -> None:
    with start_sasl(pgwarden) as conn:
        conn.send_raw(sasl_initial(data, declared=declared))
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


def test_sasl_initial_response_cut_inside_the_length_field_is_refused_08P01(
    pgwarden: RunningPgwarden, clean: Callable[[], None]
) -> None:
    with start_sasl(pgwarden) as conn:
        conn.send(b"p", cstring("SCRAM-SHA-256") + b"\0\0")
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


# --- row 13: state-machine abuse ---------------------------------------------------------------


def test_second_startup_message_instead_of_sasl_initial_response_is_refused_08P01(
    pgwarden: RunningPgwarden, clean: Callable[[], None]
) -> None:
    with start_sasl(pgwarden) as conn:
        conn.send_raw(startup_packet(BOB))  # a new identity mid-login
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


def test_second_startup_message_instead_of_sasl_response_is_refused_08P01(
    pgwarden: RunningPgwarden, clean: Callable[[], None], credential: Credential
) -> None:
    conn, _ = start_sasl_continue(pgwarden, credential[1])
    with conn:
        conn.send_raw(startup_packet(BOB))
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


def test_second_startup_message_after_the_right_proof_does_not_log_in_as_another_user(
    pgwarden: RunningPgwarden,
    clean: Callable[[], None],
    credential: Credential,
    rw_credential: Credential,
) -> None:
    # alice starts, then asks to be bob (who has a read-write grant) in the same stream.
    conn, final = start_sasl_continue(pgwarden, credential[1])
    with conn:
        conn.send_raw(startup_packet(BOB) + typed(b"p", final))
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


@pytest.mark.parametrize("password", ["right", "wrong"])
def test_password_message_pipelined_before_any_auth_request_is_refused_08P01(
    pgwarden: RunningPgwarden, clean: Callable[[], None], credential: Credential, password: str
) -> None:
    text = credential[1] if password == "right" else "guess"
    with connect(pgwarden.port) as conn:
        conn.send_raw(startup_packet(ALICE) + typed(b"p", cstring(text)))
        read_sasl_request(conn)  # sent before pgwarden reads what follows the startup
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


def test_sasl_response_before_sasl_initial_response_is_refused_08P01(
    pgwarden: RunningPgwarden, clean: Callable[[], None]
) -> None:
    with start_sasl(pgwarden) as conn:
        conn.send(b"p", b"c=biws,r=0123456789abcdefghijklmn,p=AAAA")  # a client-final
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


def test_client_final_wrapped_as_sasl_initial_response_is_judged_by_scram(
    pgwarden: RunningPgwarden, clean: Callable[[], None]
) -> None:
    with start_sasl(pgwarden) as conn:
        conn.send_raw(sasl_initial(b"c=biws,r=0123456789abcdefghijklmn,p=AAAA"))
        type_, payload = conn.read_message()
        assert type_ == b"E"
        fields = error_fields(payload)
        assert fields["S"] == "FATAL"
        assert fields["C"] in (PROTOCOL_VIOLATION, INVALID_PASSWORD), fields
        expect_closed(conn.sock)
    clean()


QUERY_DURING_AUTH = query_message("SELECT pg_sleep(0)")


def test_query_in_place_of_sasl_initial_response_is_refused_08P01(
    pgwarden: RunningPgwarden, clean: Callable[[], None]
) -> None:
    with start_sasl(pgwarden) as conn:
        conn.send_raw(QUERY_DURING_AUTH)
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


def test_query_in_place_of_sasl_response_is_refused_08P01(
    pgwarden: RunningPgwarden, clean: Callable[[], None], credential: Credential
) -> None:
    conn, _ = start_sasl_continue(pgwarden, credential[1])
    with conn:
        conn.send_raw(QUERY_DURING_AUTH)
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


def test_query_header_during_auth_is_refused_without_waiting_for_its_body(
    pgwarden: RunningPgwarden, clean: Callable[[], None]
) -> None:
    # A valid length, a wrong type: the type alone decides (Postgres checks it before the body).
    with start_sasl(pgwarden) as conn:
        conn.send_raw(b"Q" + struct.pack("!I", 4 + 60000) + b"SELECT ")
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


def test_query_pipelined_behind_sasl_initial_response_is_refused_08P01(
    pgwarden: RunningPgwarden, clean: Callable[[], None]
) -> None:
    with start_sasl(pgwarden) as conn:
        conn.send_raw(sasl_initial(CLIENT_FIRST) + QUERY_DURING_AUTH)
        assert conn.read_auth()[0] == 11  # SASLContinue went out before the query was read
        expect_fatal(conn, PROTOCOL_VIOLATION)
    clean()


# --- row 25: pipelining before authentication --------------------------------------------------


def insert_of(token: str) -> bytes:
    return query_message(f"INSERT INTO items (name) VALUES ('{token}')")


def test_query_pipelined_behind_a_wrong_proof_never_reaches_the_database(
    pgwarden: RunningPgwarden,
    clean: Callable[[], None],
    postgres: PostgresServer,
    rw_credential: Credential,
) -> None:
    token = f"pipelined-{secrets.token_hex(6)}"
    with connect(pgwarden.port) as conn:
        conn.send_raw(startup_packet(BOB))
        mechanisms, _ = read_sasl_request(conn)
        final = scram_first(conn, ScramClient("", rw_credential[1] + "x"), mechanisms)
        conn.send_raw(typed(b"p", final) + insert_of(token))  # one send
        expect_fatal(conn, INVALID_PASSWORD)
    assert count_items(postgres, token) == 0
    clean()


def test_query_pipelined_behind_the_right_proof_runs_only_after_login(
    pgwarden: RunningPgwarden, spy: UpstreamSpy, postgres: PostgresServer, rw_credential: Credential
) -> None:
    token = f"pipelined-{secrets.token_hex(6)}"
    with connect(pgwarden.port) as conn:
        conn.send_raw(startup_packet(BOB))
        # scram_login checks that AuthenticationOk .. ReadyForQuery come first, then stops.
        session = scram_login(conn, rw_credential[1], pipelined=insert_of(token))
        assert session.greeting[-1][0] == b"Z"
        assert all(type_ not in (b"C", b"E") for type_, _ in session.greeting)
        answer = conn.read_until_ready()
        assert (b"C", b"INSERT 0 1\0") in answer
        assert first_value(simple_query(conn, "SELECT current_user")) == RW_ROLE
        session.close()
    assert count_items(postgres, token) == 1
    assert spy.roles == [RW_ROLE]
