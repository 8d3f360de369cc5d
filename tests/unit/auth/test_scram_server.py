"""The client-facing SCRAM server: malformed input, order, enumeration, channel binding, fuzzing.

SECURITY.md rows 12 (malformed messages), 13 (state abuse), 14 (no user enumeration),
15 (channel binding) and 16 (grant re-checked at the last step).
"""

from __future__ import annotations

import base64
import contextlib
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.auth import (
    MECHANISM,
    MECHANISM_PLUS,
    AuthError,
    ChannelBindingError,
    CredentialRejection,
    InvalidPasswordError,
    ScramProtocolError,
    ScramServer,
    ScramStateError,
    ServerState,
)
from proxy.auth import scram_server as scram_server_module
from proxy.auth.credentials import ScramVerifier, make_verifier
from tests.fixtures.examples import examples
from tests.unit.auth.helpers import (
    CB_DATA,
    CLIENT_NONCE,
    FAST_ITERATIONS,
    MOCK_SECRET,
    SERVER_NONCE,
    client,
    exchange,
    fast_verifier,
    server,
    start,
)

NONCE = (CLIENT_NONCE + SERVER_NONCE).encode()
PROOF = base64.b64encode(bytes(32))


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


MALFORMED_CLIENT_FIRST = {
    "empty": b"",
    "embedded NUL": b"n,,n=,r=abc\x00def",
    "not UTF-8": b"n,,n=,r=\xff\xfe",
    "too long": b"n,,n=,r=abc," + b"x=" + b"y" * 3000,
    "no GS2 header": b"n=,r=abc",
    "incomplete GS2 header": b"n,",
    "GS2 flag other than n/y/p": b"x,,n=,r=abc",
    "empty GS2 flag": b",,n=,r=abc",
    "authzid": b"n,a=admin,n=,r=abc",
    "junk in authzid slot": b"n,zz,n=,r=abc",
    "bad channel binding name": b"p=tls server!,,n=,r=abc",
    "mandatory extension": b"n,,m=ext,n=,r=abc",
    "missing user name": b"n,,r=abc",
    "missing nonce": b"n,,n=",
    "attributes out of order": b"n,,r=abc,n=",
    "empty nonce": b"n,,n=,r=",
    "non-printable nonce": b"n,,n=,r=ab\x7fc",
    "comma-less non-ASCII nonce": "n,,n=,r=abcé".encode(),
    "nonce too long": b"n,,n=,r=" + b"a" * 300,
    "trailing comma": b"n,,n=,r=abc,",
    "trailing garbage": b"n,,n=,r=abc,garbage",
    "duplicate nonce": b"n,,n=,r=abc,r=def",
    "attribute name not a letter": b"n,,n=,r=abc,1=x",
    "missing equals": b"n,,n,r=abc",
}


@pytest.mark.parametrize("data", MALFORMED_CLIENT_FIRST.values(), ids=MALFORMED_CLIENT_FIRST)
def test_malformed_client_first_is_a_protocol_violation(data: bytes) -> None:
    srv = server(fast_verifier())
    with pytest.raises(ScramProtocolError) as caught:
        srv.receive_client_first(MECHANISM, data)
    assert caught.value.sqlstate == "08P01"
    assert srv.state is ServerState.FAILED


def test_client_first_may_carry_optional_extensions() -> None:
    srv = server(fast_verifier())
    assert start(srv, b"n,,n=,r=" + CLIENT_NONCE.encode() + b",x=whatever") == (
        b"r=cnoncesnonce,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=16"
    )


MALFORMED_CLIENT_FINAL = {
    "empty": b"",
    "embedded NUL": b"c=biws,r=" + NONCE + b",p=" + PROOF + b"\x00",
    "not UTF-8": b"c=biws,r=\xff,p=" + PROOF,
    "missing proof": b"c=biws,r=" + NONCE,
    "missing nonce": b"c=biws,p=" + PROOF,
    "missing channel binding": b"r=" + NONCE + b",p=" + PROOF,
    "attributes out of order": b"r=" + NONCE + b",c=biws,p=" + PROOF,
    "proof not last": b"c=biws,r=" + NONCE + b",p=" + PROOF + b",x=1",
    "duplicate channel binding": b"c=biws,r=" + NONCE + b",c=biws,p=" + PROOF,
    "duplicate proof": b"c=biws,r=" + NONCE + b",p=" + PROOF + b",p=" + PROOF,
    "proof not base64": b"c=biws,r=" + NONCE + b",p=!!!!",
    "proof without padding": b"c=biws,r=" + NONCE + b",p=" + PROOF.rstrip(b"="),
    "proof too short": b"c=biws,r=" + NONCE + b",p=" + b64(bytes(31)),
    "proof too long": b"c=biws,r=" + NONCE + b",p=" + b64(bytes(33)),
    "empty proof": b"c=biws,r=" + NONCE + b",p=",
    "trailing garbage after proof": b"c=biws,r=" + NONCE + b",p=" + PROOF + b"garbage",
    "trailing comma": b"c=biws,r=" + NONCE + b",p=" + PROOF + b",",
    "channel binding not base64": b"c=b!ws,r=" + NONCE + b",p=" + PROOF,
    "empty channel binding": b"c=,r=" + NONCE + b",p=" + PROOF,
    "nonce not extending ours": b"c=biws,r=" + NONCE + b"x,p=" + PROOF,
    "nonce of the client only": b"c=biws,r=" + CLIENT_NONCE.encode() + b",p=" + PROOF,
    "nonce of someone else": b"c=biws,r=othernonce,p=" + PROOF,
    "empty nonce": b"c=biws,r=,p=" + PROOF,
    "binding of another GS2 header": b"c=" + b64(b"y,,") + b",r=" + NONCE + b",p=" + PROOF,
    "binding with data though flag n": b"c="
    + b64(b"n,," + CB_DATA)
    + b",r="
    + NONCE
    + b",p="
    + PROOF,
}


@pytest.mark.parametrize("data", MALFORMED_CLIENT_FINAL.values(), ids=MALFORMED_CLIENT_FINAL)
def test_malformed_client_final_is_a_protocol_violation(data: bytes) -> None:
    srv = server(fast_verifier())
    start(srv)
    with pytest.raises(ScramProtocolError) as caught:
        srv.receive_client_final(data)
    assert caught.value.sqlstate == "08P01"
    assert srv.state is ServerState.FAILED


def test_unsupported_mechanism_is_refused() -> None:
    with pytest.raises(ScramProtocolError):
        server(fast_verifier()).receive_client_first("SCRAM-SHA-1", b"n,,n=,r=abc")


# --- state-machine abuse (row 13) ----------------------------------------------------------------

FIRST = b"n,,n=,r=" + CLIENT_NONCE.encode()


def succeeded() -> ScramServer:
    srv = server(fast_verifier())
    exchange(srv, client())
    return srv


def failed() -> ScramServer:
    srv = server(fast_verifier())
    with pytest.raises(InvalidPasswordError):
        exchange(srv, client("wrong"))
    return srv


ABUSE: dict[str, tuple[Callable[[], ScramServer], Callable[[ScramServer], object]]] = {
    "final before first": (lambda: server(fast_verifier()), lambda s: s.receive_client_final(b"")),
    "first twice": (
        lambda: (s := server(fast_verifier()), start(s))[0],
        lambda s: s.receive_client_first(MECHANISM, FIRST),
    ),
    "first after success": (succeeded, lambda s: s.receive_client_first(MECHANISM, FIRST)),
    "final after success": (succeeded, lambda s: s.receive_client_final(b"c=biws")),
    "first after failure": (failed, lambda s: s.receive_client_first(MECHANISM, FIRST)),
    "final after failure": (failed, lambda s: s.receive_client_final(b"c=biws")),
}


@pytest.mark.parametrize(("make", "abuse"), ABUSE.values(), ids=ABUSE)
def test_messages_out_of_order_are_refused(
    make: Callable[[], ScramServer], abuse: Callable[[ScramServer], object]
) -> None:
    srv = make()
    with pytest.raises(ScramStateError) as caught:
        abuse(srv)
    assert caught.value.sqlstate == "08P01"
    assert srv.state is ServerState.FAILED
    assert not srv.succeeded


# --- no user enumeration (row 14) ----------------------------------------------------------------


def failure(verifier_known: bool, password: str, **kwargs: object) -> InvalidPasswordError:
    srv = server(fast_verifier("right") if verifier_known else None, **kwargs)
    with pytest.raises(InvalidPasswordError) as caught:
        exchange(srv, client(password))
    assert srv.state is ServerState.FAILED
    return caught.value


def test_unknown_user_and_wrong_password_fail_identically() -> None:
    wrong = failure(verifier_known=True, password="wrong")
    unknown = failure(verifier_known=False, password="right")
    expected = 'password authentication failed for user "alice"'
    assert wrong.message == unknown.message == expected
    assert wrong.sqlstate == unknown.sqlstate == "28P01"
    assert wrong.severity == unknown.severity
    assert type(wrong) is type(unknown)
    assert wrong.detail != unknown.detail  # the reason is kept for the log


def test_a_grant_that_ends_during_the_exchange_fails_like_a_wrong_password() -> None:
    ended = failure(verifier_known=True, password="right", still_valid=lambda _v: False)
    assert ended.message == 'password authentication failed for user "alice"'
    assert ended.sqlstate == "28P01"


@pytest.mark.parametrize(
    ("known", "password", "still_valid", "reason"),
    [
        (True, "wrong", True, CredentialRejection.WRONG_PROOF),
        (False, "right", True, CredentialRejection.NO_CREDENTIAL),
        (True, "right", False, CredentialRejection.GRANT_ENDED),
        (True, "wrong", False, CredentialRejection.WRONG_PROOF),  # a wrong proof is said first
    ],
)
def test_the_failure_carries_a_typed_reason_and_its_text_for_the_log(
    known: bool, password: str, still_valid: bool, reason: CredentialRejection
) -> None:
    failed = failure(verifier_known=known, password=password, still_valid=lambda _v: still_valid)
    assert failed.reason is reason
    assert failed.detail == reason.value
    assert failed.message == 'password authentication failed for user "alice"'


def test_the_grant_is_rechecked_at_the_last_step() -> None:
    calls: list[str] = []

    def still_valid(verifier: ScramVerifier) -> bool:
        assert verifier == fast_verifier()
        calls.append("checked")
        return True

    srv = server(fast_verifier(), still_valid=still_valid)
    cli = client()
    server_first = srv.receive_client_first(MECHANISM, cli.client_first())
    assert calls == []
    srv.receive_client_final(cli.receive_server_first(server_first))
    assert calls == ["checked"]


# --- several credentials of one user (two grants on one target) ----------------------------------


def two_verifiers() -> tuple[ScramVerifier, ScramVerifier]:
    return fast_verifier("read-only password"), fast_verifier("read-write password")


@pytest.mark.parametrize("index", [0, 1])
def test_each_of_several_credentials_logs_in_and_says_which(index: int) -> None:
    verifiers = two_verifiers()
    checked: list[ScramVerifier] = []
    srv = server(verifiers, still_valid=lambda v: checked.append(v) is None)
    cli = client(["read-only password", "read-write password"][index])
    exchange(srv, cli)  # the client checks the server signature of the verifier it proved
    assert srv.matched == index
    assert checked == [verifiers[index]]


def test_a_proof_that_matches_none_of_several_fails_like_a_wrong_password() -> None:
    srv = server(two_verifiers())
    with pytest.raises(InvalidPasswordError) as caught:
        exchange(srv, client("neither"))
    assert caught.value.reason is CredentialRejection.WRONG_PROOF
    assert srv.matched is None


def test_verifiers_with_different_salts_cannot_share_one_exchange() -> None:
    other_salt = make_verifier("x", iterations=FAST_ITERATIONS, salt=b"fedcba9876543210")
    with pytest.raises(ValueError, match="share their salt"):
        server((fast_verifier(), other_salt))


def test_no_match_is_reported_before_the_exchange_ends() -> None:
    srv = server(two_verifiers())
    start(srv)
    assert srv.matched is None


# --- a credential issued a moment ago, unknown when the exchange began (a replica's memory) ------


def test_a_late_verifier_sharing_the_salt_is_checked_when_the_known_ones_fail() -> None:
    known, issued_since = two_verifiers()
    asked: list[str] = []
    srv = server(known, late_verifiers=lambda: asked.append("asked") or [issued_since])
    exchange(srv, client("read-write password"))
    assert (srv.matched, asked) == (1, ["asked"])


def test_late_verifiers_are_not_asked_for_when_a_known_one_holds() -> None:
    srv = server(two_verifiers()[0], late_verifiers=lambda: pytest.fail("asked"))
    exchange(srv, client("read-only password"))
    assert srv.matched == 0


def test_a_proof_no_late_verifier_holds_for_fails_like_any_wrong_password() -> None:
    known, issued_since = two_verifiers()
    srv = server(known, late_verifiers=lambda: [issued_since])
    with pytest.raises(InvalidPasswordError) as caught:
        exchange(srv, client("neither"))
    assert caught.value.reason is CredentialRejection.WRONG_PROOF


def test_a_mock_exchange_asks_for_late_verifiers_too_and_never_uses_them() -> None:
    asked: list[str] = []
    real = fast_verifier("right")
    srv = server(None, late_verifiers=lambda: asked.append("asked") or [real])
    with pytest.raises(InvalidPasswordError) as caught:
        exchange(srv, client("right"))
    assert caught.value.reason is CredentialRejection.NO_CREDENTIAL
    assert asked == ["asked"]  # the same store read as for a known user: same cost


def test_a_late_verifier_with_another_salt_is_a_caller_error() -> None:
    other_salt = make_verifier("x", iterations=FAST_ITERATIONS, salt=b"fedcba9876543210")
    srv = server(fast_verifier(), late_verifiers=lambda: [other_salt])
    with pytest.raises(ValueError, match="share the salt"):
        exchange(srv, client("wrong"))


def mock_salt_line(username: str, secret: bytes = MOCK_SECRET) -> bytes:
    srv = ScramServer(username, None, mock_secret=secret, nonce_factory=lambda: SERVER_NONCE)
    return start(srv)


def test_mock_salt_is_stable_per_user_and_differs_between_users() -> None:
    assert mock_salt_line("ghost") == mock_salt_line("ghost")
    assert mock_salt_line("ghost") != mock_salt_line("phantom")
    assert mock_salt_line("ghost") != mock_salt_line(
        "ghost", secret=b"another secret, 32 bytes long.."
    )


def test_mock_challenge_looks_like_a_real_one() -> None:
    real = start(ScramServer("alice", fast_verifier(), mock_secret=MOCK_SECRET)).split(b",")
    fake = start(ScramServer("ghost", None, mock_secret=MOCK_SECRET)).split(b",")
    assert len(base64.b64decode(real[1][2:])) == len(base64.b64decode(fake[1][2:])) == 16
    assert fake[2] == b"i=4096"


def count_hashing(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    counts: Counter[str] = Counter()
    for name in ("hmac_sha256", "sha256"):
        real = getattr(scram_server_module, name)

        def counted(*args: bytes, _real: Callable[..., bytes] = real, _name: str = name) -> bytes:
            counts[_name] += 1
            return _real(*args)

        monkeypatch.setattr(scram_server_module, name, counted)
    return counts


@pytest.mark.parametrize(
    ("known", "password"), [(True, "right"), (True, "wrong"), (False, "right")]
)
def test_every_path_does_the_same_hashing_work(
    monkeypatch: pytest.MonkeyPatch, known: bool, password: str
) -> None:
    verifier = fast_verifier("right")
    counts = count_hashing(monkeypatch)
    srv = server(verifier if known else None)
    with contextlib.suppress(InvalidPasswordError):
        exchange(srv, client(password))
    assert counts == Counter({"hmac_sha256": 5, "sha256": 1})


def test_mock_secret_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="mock_secret"):
        ScramServer("alice", None, mock_secret=b"short")


def test_server_nonce_source_must_be_printable() -> None:
    srv = server(fast_verifier(), nonce_factory=lambda: "has,comma")
    with pytest.raises(ValueError, match="nonce_factory"):
        start(srv)
    assert srv.state is ServerState.FAILED


# --- channel binding (row 15) --------------------------------------------------------------------


def test_plus_is_offered_only_with_binding_data() -> None:
    assert server(None).mechanisms() == [MECHANISM]
    assert server(None, channel_binding=CB_DATA).mechanisms() == [MECHANISM_PLUS, MECHANISM]
    required = server(None, channel_binding=CB_DATA, require_channel_binding=True)
    assert required.mechanisms() == [MECHANISM_PLUS]


def test_binding_cannot_be_required_on_plaintext() -> None:
    with pytest.raises(ValueError, match="channel binding"):
        server(None, require_channel_binding=True)


# (server has binding data, server requires it, client's binding data, offers the client sees)
SUCCESSFUL_BINDINGS = {
    "plaintext, client cannot bind (n)": (False, False, None, None),
    "plaintext, client could bind but we cannot (y)": (False, False, CB_DATA, None),
    "TLS, client binds (-PLUS)": (True, False, CB_DATA, None),
    "TLS, client cannot bind (n)": (True, False, None, None),
    "TLS, binding required, client binds": (True, True, CB_DATA, None),
}


@pytest.mark.parametrize(
    ("tls", "required", "client_cb", "offers"),
    SUCCESSFUL_BINDINGS.values(),
    ids=SUCCESSFUL_BINDINGS,
)
def test_channel_binding_matrix_successes(
    tls: bool, required: bool, client_cb: bytes | None, offers: list[str] | None
) -> None:
    srv = server(
        fast_verifier(),
        channel_binding=CB_DATA if tls else None,
        require_channel_binding=required,
    )
    cb = None if client_cb is None else ("tls-server-end-point", client_cb)
    exchange(srv, client(channel_binding=cb))
    assert srv.succeeded


def first_with(gs2: bytes) -> bytes:
    return gs2 + b"n=,r=" + CLIENT_NONCE.encode()


P_HEADER = b"p=tls-server-end-point,,"
REFUSED_FIRSTS = {
    "downgrade: y while -PLUS is offered": (True, False, MECHANISM, first_with(b"y,,")),
    "p= with plain SCRAM over TLS": (True, False, MECHANISM, first_with(P_HEADER)),
    "p= on plaintext": (False, False, MECHANISM, first_with(P_HEADER)),
    "-PLUS on plaintext": (False, False, MECHANISM_PLUS, first_with(P_HEADER)),
    "-PLUS without binding (n)": (True, False, MECHANISM_PLUS, first_with(b"n,,")),
    "-PLUS without binding (y)": (True, False, MECHANISM_PLUS, first_with(b"y,,")),
    "-PLUS with tls-unique": (True, False, MECHANISM_PLUS, first_with(b"p=tls-unique,,")),
    "binding required, client sends n": (True, True, MECHANISM, first_with(b"n,,")),
    "binding required, client sends y": (True, True, MECHANISM, first_with(b"y,,")),
}


@pytest.mark.parametrize(
    ("tls", "required", "mechanism", "data"), REFUSED_FIRSTS.values(), ids=REFUSED_FIRSTS
)
def test_channel_binding_matrix_refusals(
    tls: bool, required: bool, mechanism: str, data: bytes
) -> None:
    srv = server(
        fast_verifier(), channel_binding=CB_DATA if tls else None, require_channel_binding=required
    )
    with pytest.raises(ScramProtocolError) as caught:
        srv.receive_client_first(mechanism, data)
    assert caught.value.sqlstate == "08P01"


def plus_final(binding: bytes) -> bytes:
    return b"c=" + b64(binding) + b",r=" + NONCE + b",p=" + PROOF


WRONG_BINDINGS = {
    "other certificate": plus_final(P_HEADER + bytes(32)),
    "no binding data": plus_final(P_HEADER),
    "truncated data": plus_final(P_HEADER + CB_DATA[:-1]),
    "other GS2 header": plus_final(b"n,," + CB_DATA),
}


@pytest.mark.parametrize("data", WRONG_BINDINGS.values(), ids=WRONG_BINDINGS)
def test_wrong_binding_data_is_refused(data: bytes) -> None:
    srv = server(fast_verifier(), channel_binding=CB_DATA)
    srv.receive_client_first(MECHANISM_PLUS, first_with(P_HEADER))
    with pytest.raises(ChannelBindingError, match="channel binding check failed"):
        srv.receive_client_final(data)


def test_client_bound_to_another_certificate_is_refused() -> None:
    srv = server(fast_verifier(), channel_binding=CB_DATA)
    with pytest.raises(ChannelBindingError):
        exchange(srv, client(channel_binding=("tls-server-end-point", bytes(32))))


# --- fuzzing (row 12) ----------------------------------------------------------------------------

SCRAMISH = st.text(alphabet="nypcmarsiv=,,,-_+/ab0*\x00é", max_size=60).map(str.encode)
FUZZ = settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ
@given(
    mechanism=st.sampled_from([MECHANISM, MECHANISM_PLUS, "x"]),
    data=st.one_of(st.binary(max_size=300), SCRAMISH),
    tls=st.booleans(),
)
def test_any_client_first_raises_only_auth_errors(mechanism: str, data: bytes, tls: bool) -> None:
    srv = server(None, channel_binding=CB_DATA if tls else None)
    try:
        srv.receive_client_first(mechanism, data)
    except AuthError:
        assert srv.state is ServerState.FAILED


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), SCRAMISH, SCRAMISH.map(lambda d: b"c=biws," + d)))
def test_any_client_final_raises_only_auth_errors(data: bytes) -> None:
    srv = server(fast_verifier())
    start(srv)
    with pytest.raises(AuthError):
        srv.receive_client_final(data)
    assert srv.state is ServerState.FAILED
