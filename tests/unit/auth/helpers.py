"""Shared vectors and builders for the auth unit tests."""

from __future__ import annotations

import base64
from typing import Any

from proxy.auth import MECHANISM, ScramClient, ScramServer, ScramVerifier, make_verifier

# RFC 7677 section 3, the SCRAM-SHA-256 example exchange.
RFC_USER = "user"
RFC_PASSWORD = "pencil"
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_ITERATIONS = 4096
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

MOCK_SECRET = b"a server-wide mock secret, 32 b."
FAST_ITERATIONS = 16  # unit tests only: real verifiers use 4096
CLIENT_NONCE = "cnonce"
SERVER_NONCE = "snonce"
CB_DATA = bytes(range(32))  # stands in for the hash of our TLS certificate


def fast_verifier(password: str = "secret") -> ScramVerifier:
    return make_verifier(password, iterations=FAST_ITERATIONS, salt=b"0123456789abcdef")


def server(verifier: ScramVerifier | None, **kwargs: Any) -> ScramServer:
    kwargs.setdefault("nonce_factory", lambda: SERVER_NONCE)
    kwargs.setdefault("mock_iterations", FAST_ITERATIONS)
    return ScramServer("alice", verifier, mock_secret=MOCK_SECRET, **kwargs)


def client(password: str = "secret", **kwargs: Any) -> ScramClient:
    kwargs.setdefault("nonce_factory", lambda: CLIENT_NONCE)
    return ScramClient("alice", password, **kwargs)


def exchange(srv: ScramServer, cli: ScramClient) -> None:
    """A full login of `cli` against `srv`, in memory; raises whatever either side raises."""
    mechanism = cli.select_mechanism(srv.mechanisms())
    server_first = srv.receive_client_first(mechanism, cli.client_first())
    server_final = srv.receive_client_final(cli.receive_server_first(server_first))
    cli.receive_server_final(server_final)


def start(srv: ScramServer, first: bytes = b"n,,n=,r=" + CLIENT_NONCE.encode()) -> bytes:
    """Feed a client-first message (plain SCRAM) and return the server-first."""
    return srv.receive_client_first(MECHANISM, first)
