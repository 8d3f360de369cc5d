"""The RFC 7677 example exchange, reproduced byte for byte by both state machines."""

from __future__ import annotations

from proxy.auth import ClientState, ScramClient, ScramServer, ServerState, make_verifier
from tests.unit.auth.helpers import (
    MOCK_SECRET,
    RFC_CLIENT_FINAL,
    RFC_CLIENT_FIRST,
    RFC_CLIENT_NONCE,
    RFC_ITERATIONS,
    RFC_PASSWORD,
    RFC_SALT,
    RFC_SERVER_FINAL,
    RFC_SERVER_FIRST,
    RFC_SERVER_NONCE,
    RFC_USER,
)


def rfc_client() -> ScramClient:
    return ScramClient(
        RFC_USER, RFC_PASSWORD, send_username=True, nonce_factory=lambda: RFC_CLIENT_NONCE
    )


def rfc_server() -> ScramServer:
    verifier = make_verifier(RFC_PASSWORD, iterations=RFC_ITERATIONS, salt=RFC_SALT)
    return ScramServer(
        RFC_USER, verifier, mock_secret=MOCK_SECRET, nonce_factory=lambda: RFC_SERVER_NONCE
    )


def test_client_reproduces_the_rfc_7677_exchange() -> None:
    client = rfc_client()
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.receive_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.receive_server_final(RFC_SERVER_FINAL)
    assert client.state is ClientState.SUCCEEDED


def test_server_reproduces_the_rfc_7677_exchange() -> None:
    server = rfc_server()
    assert server.mechanisms() == ["SCRAM-SHA-256"]
    assert server.receive_client_first("SCRAM-SHA-256", RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.receive_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.state is ServerState.SUCCEEDED
    assert server.succeeded


def test_client_sends_an_empty_user_name_by_default_like_libpq() -> None:
    client = ScramClient(RFC_USER, RFC_PASSWORD, nonce_factory=lambda: RFC_CLIENT_NONCE)
    assert client.client_first() == b"n,,n=,r=" + RFC_CLIENT_NONCE.encode()


def test_server_ignores_the_user_name_in_client_first_as_postgres_does() -> None:
    for name in (b"", b"*", b"someone-else", b"=2Cx=3D"):
        server = rfc_server()
        first = b"n,,n=" + name + b",r=" + RFC_CLIENT_NONCE.encode()
        server_first = server.receive_client_first("SCRAM-SHA-256", first)
        assert server_first == RFC_SERVER_FIRST


def test_client_escapes_the_user_name_when_it_sends_one() -> None:
    client = ScramClient("a,b=c", "pw", send_username=True, nonce_factory=lambda: "n0nce")
    assert client.client_first() == b"n,,n=a=2Cb=3Dc,r=n0nce"
