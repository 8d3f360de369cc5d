"""The upstream-facing SCRAM client: round trips, and an upstream that lies (SECURITY.md row 19)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.auth import (
    MAX_UPSTREAM_SCRAM_ITERATIONS,
    MECHANISM,
    MECHANISM_PLUS,
    ClientState,
    SaltedPasswordCache,
    ScramClient,
    UpstreamAuthError,
    credentials,
    make_verifier,
)
from proxy.auth import scram_client as scram_client_module
from tests.fixtures.examples import examples
from tests.unit.auth.helpers import (
    CB_DATA,
    CLIENT_NONCE,
    FAST_ITERATIONS,
    RFC_CLIENT_NONCE,
    RFC_PASSWORD,
    RFC_SERVER_FIRST,
    RFC_USER,
    client,
    exchange,
    fast_verifier,
    server,
)

SALT = base64.b64encode(b"0123456789abcdef").decode()
PASSWORDS = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@settings(max_examples=examples(40), deadline=None)
@given(password=PASSWORDS, bind=st.booleans(), salt=st.binary(min_size=1, max_size=32))
def test_client_logs_in_to_our_server_with_any_password(
    password: str, bind: bool, salt: bytes
) -> None:
    verifier = make_verifier(password, iterations=FAST_ITERATIONS, salt=salt)
    srv = server(verifier, channel_binding=CB_DATA if bind else None)
    cli = client(password, channel_binding=("tls-server-end-point", CB_DATA) if bind else None)
    exchange(srv, cli)
    assert srv.succeeded
    assert cli.state is ClientState.SUCCEEDED
    assert cli.mechanism == (MECHANISM_PLUS if bind else MECHANISM)


def started(**kwargs: Any) -> ScramClient:
    cli = client(**kwargs)
    cli.client_first()
    return cli


def server_first(nonce: str = CLIENT_NONCE + "snonce", salt: str = SALT, i: str = "16") -> bytes:
    return f"r={nonce},s={salt},i={i}".encode()


MALICIOUS_SERVER_FIRST = {
    "iteration count above the cap": server_first(i=str(MAX_UPSTREAM_SCRAM_ITERATIONS + 1)),
    "iteration count absurd": server_first(i="2147483647"),
    "iteration count too many digits": server_first(i="9" * 5000),
    "iteration count 0": server_first(i="0"),
    "iteration count negative": server_first(i="-4096"),
    "iteration count with a plus sign": server_first(i="+4096"),
    "iteration count non-numeric": server_first(i="lots"),
    "iteration count in exponent form": server_first(i="1e5"),
    "iteration count in non-ASCII digits": server_first(i="\u0664\u0660\u0669\u0666"),
    "iteration count empty": server_first(i=""),
    "nonce not extending ours": server_first(nonce="somebodyelse"),
    "nonce equal to ours": server_first(nonce=CLIENT_NONCE),
    "nonce with ours in the middle": server_first(nonce="x" + CLIENT_NONCE + "y"),
    "huge nonce": server_first(nonce=CLIENT_NONCE + "a" * 5000),
    "nonce just over the cap": server_first(nonce=CLIENT_NONCE + "a" * 251),
    "non-printable nonce": server_first(nonce=CLIENT_NONCE + "\x01"),
    "salt not base64": server_first(salt="!!notbase64!!"),
    "salt empty": server_first(salt=""),
    "salt not ASCII": server_first(salt="\u00e9t\u00e9AAAA"),
    "salt without padding": server_first(salt=SALT.rstrip("=")),
    "salt too large": server_first(salt=base64.b64encode(bytes(65)).decode()),
    "missing iteration count": f"r={CLIENT_NONCE}s,s={SALT}".encode(),
    "attributes out of order": f"s={SALT},r={CLIENT_NONCE}s,i=16".encode(),
    "mandatory extension": f"m=x,r={CLIENT_NONCE}s,s={SALT},i=16".encode(),
    "error instead of challenge": b"e=other-error",
    "trailing garbage": server_first() + b",garbage",
    "duplicate iteration count": server_first() + b",i=1",
    "empty": b"",
    "embedded NUL": server_first() + b"\x00",
    "not UTF-8": b"r=\xff\xfe",
    "oversized": server_first() + b",x=" + b"y" * 5000,
}


@pytest.mark.parametrize("data", MALICIOUS_SERVER_FIRST.values(), ids=MALICIOUS_SERVER_FIRST)
def test_malicious_server_first_is_refused(data: bytes) -> None:
    cli = started()
    with pytest.raises(UpstreamAuthError) as caught:
        cli.receive_server_first(data)
    assert caught.value.sqlstate == "08001"
    assert cli.state is ClientState.FAILED


def test_iteration_cap_is_configurable() -> None:
    cli = started(max_iterations=8)
    with pytest.raises(UpstreamAuthError, match="iteration count 16 is above the limit of 8"):
        cli.parse_server_first(server_first())


def test_server_extensions_are_ignored() -> None:
    first = started().parse_server_first(server_first() + b",x=future")
    assert (first.salt, first.iterations) == (b"0123456789abcdef", 16)


def completed_until_server_final(password: str = "secret") -> tuple[ScramClient, bytes]:
    """A client that sent its proof, and the signature a genuine server would answer."""
    srv = server(fast_verifier())
    cli = client(password)
    final = cli.receive_server_first(srv.receive_client_first(MECHANISM, cli.client_first()))
    return cli, srv.receive_client_final(final)


def test_genuine_server_signature_is_accepted() -> None:
    cli, server_final = completed_until_server_final()
    cli.receive_server_final(server_final)
    assert cli.state is ClientState.SUCCEEDED


BAD_SERVER_FINAL = {
    "wrong signature": b"v=" + base64.b64encode(bytes(32)),
    "signature too short": b"v=" + base64.b64encode(bytes(31)),
    "signature not base64": b"v=!!!",
    "empty signature": b"v=",
    "server error": b"e=invalid-proof",
    "server error with junk": b"e=\x1b[31mred,x=y",
    "unknown attribute": b"x=1",
    "garbage": b"garbage",
    "empty": b"",
    "embedded NUL": b"v=\x00",
}


@pytest.mark.parametrize("data", BAD_SERVER_FINAL.values(), ids=BAD_SERVER_FINAL)
def test_bad_server_final_is_refused(data: bytes) -> None:
    cli, _ = completed_until_server_final()
    with pytest.raises(UpstreamAuthError) as caught:
        cli.receive_server_final(data)
    assert caught.value.sqlstate == "08001"
    assert cli.state is ClientState.FAILED


def test_genuine_signature_with_trailing_garbage_is_refused() -> None:
    cli, server_final = completed_until_server_final()
    with pytest.raises(UpstreamAuthError):
        cli.receive_server_final(server_final + b",v=again")


def test_server_error_is_reported_sanitised() -> None:
    cli, _ = completed_until_server_final()
    with pytest.raises(UpstreamAuthError, match="rejected") as caught:
        cli.receive_server_final(b"e=\x1b[31mbad")
    assert caught.value.detail == "e=?[31mbad"


def test_messages_out_of_order_are_refused() -> None:
    cli = client()
    with pytest.raises(UpstreamAuthError):
        cli.receive_server_final(b"v=" + base64.b64encode(bytes(32)))
    assert cli.state is ClientState.FAILED
    twice = started()
    with pytest.raises(UpstreamAuthError):
        twice.client_first()
    early = started()
    with pytest.raises(UpstreamAuthError):
        early.compute_salted_password()
    late = started()
    with pytest.raises(UpstreamAuthError):
        late.select_mechanism([MECHANISM])


def test_mechanism_selection() -> None:
    bound = ("tls-server-end-point", CB_DATA)
    assert client().select_mechanism([MECHANISM_PLUS, MECHANISM]) == MECHANISM
    assert client(channel_binding=bound).select_mechanism([MECHANISM_PLUS, MECHANISM]) == (
        MECHANISM_PLUS
    )
    downgraded = client(channel_binding=bound)
    assert downgraded.select_mechanism([MECHANISM]) == MECHANISM
    assert downgraded.client_first().startswith(b"y,,")  # tells the server we could have bound
    with pytest.raises(UpstreamAuthError, match="no supported SASL mechanism"):
        client().select_mechanism(["SCRAM-SHA-1", MECHANISM_PLUS])


def test_plus_client_first_names_the_binding_type() -> None:
    cli = client(channel_binding=("tls-server-end-point", CB_DATA))
    assert cli.client_first() == b"p=tls-server-end-point,,n=,r=" + CLIENT_NONCE.encode()


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="channel binding"):
        ScramClient("u", "p", channel_binding=("tls-unique", CB_DATA))
    cli = ScramClient("u", "p", nonce_factory=lambda: "")
    with pytest.raises(ValueError, match="nonce_factory"):
        cli.client_first()
    other = started()
    other.parse_server_first(server_first())
    with pytest.raises(ValueError, match="32 bytes"):
        other.client_final(b"short")


def test_salted_password_is_cached_per_salt(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = credentials.salted_password

    def counting(password: str | bytes, salt: bytes, iterations: int) -> bytes:
        calls.append(iterations)
        return real(password, salt, iterations)

    monkeypatch.setattr(scram_client_module, "salted_password", counting)
    cache = SaltedPasswordCache()
    for _ in range(3):
        exchange(server(fast_verifier()), client(cache=cache))
    assert calls == [FAST_ITERATIONS]
    assert len(cache) == 1


def test_split_api_lets_the_caller_run_pbkdf2_elsewhere() -> None:
    cli = ScramClient(
        RFC_USER, RFC_PASSWORD, send_username=True, nonce_factory=lambda: RFC_CLIENT_NONCE
    )
    cli.client_first()
    first = cli.parse_server_first(RFC_SERVER_FIRST)
    assert (first.iterations, len(first.salt)) == (4096, 16)
    assert cli.state is ClientState.HAVE_SERVER_FIRST
    final = cli.client_final(cli.compute_salted_password())
    assert final.endswith(b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")


@settings(max_examples=examples(300), deadline=None)
@given(data=st.binary(max_size=300))
def test_any_server_first_raises_only_upstream_errors(data: bytes) -> None:
    cli = started()
    try:
        cli.parse_server_first(data)
    except UpstreamAuthError:
        assert cli.state is ClientState.FAILED


@settings(max_examples=examples(300), deadline=None)
@given(data=st.one_of(st.binary(max_size=200), st.text("ve=,x+/AB0").map(str.encode)))
def test_any_server_final_raises_only_upstream_errors(data: bytes) -> None:
    cli, _ = completed_until_server_final()
    with pytest.raises(UpstreamAuthError):
        cli.receive_server_final(data)


def test_cached_salted_password_answers_only_from_the_cache() -> None:
    cache = SaltedPasswordCache()
    first = ScramClient(RFC_USER, RFC_PASSWORD, nonce_factory=lambda: RFC_CLIENT_NONCE, cache=cache)
    assert first.cached_salted_password() is None  # before server-first
    first.client_first()
    first.parse_server_first(RFC_SERVER_FIRST)
    assert first.cached_salted_password() is None  # nothing computed yet
    salted = first.compute_salted_password()
    again = ScramClient(RFC_USER, RFC_PASSWORD, nonce_factory=lambda: RFC_CLIENT_NONCE, cache=cache)
    again.client_first()
    again.parse_server_first(RFC_SERVER_FIRST)
    assert again.cached_salted_password() == salted
    assert ScramClient(RFC_USER, RFC_PASSWORD).cached_salted_password() is None  # no cache
