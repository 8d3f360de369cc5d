"""SCRAM-SHA-256(-PLUS) server side: how pgwarden checks a client's temporary credential.

A sans-I/O state machine, one per login. The session layer sends `AuthenticationSASL` with
`mechanisms()`, feeds the client's SASLInitialResponse to `receive_client_first` (whose return
value goes out in AuthenticationSASLContinue), then the SASLResponse to `receive_client_final`
(whose return value goes out in AuthenticationSASLFinal, followed by AuthenticationOk). Any
failure raises an `AuthError`: `ScramProtocolError` (08P01) for a broken exchange,
`InvalidPasswordError` (28P01) for a wrong proof.

    AWAITING_CLIENT_FIRST --client-first--> AWAITING_CLIENT_FINAL --client-final--> SUCCEEDED
            (any error, any message out of order, anything after the end --> FAILED)

No user enumeration (SECURITY.md row 14): with no verifier (unknown user, no grant, expired or
revoked grant) the exchange runs in full against mock credentials derived from a server-wide
secret, a salt that is stable per user name, and fails at the last step with the same error as a
wrong password. Both paths run the same code: the mock credentials are always derived, and the
proof is always checked and the server signature always computed. The server never runs PBKDF2.

Channel binding (row 15): -PLUS is offered only when we have tls-server-end-point data (TLS); the
`y` flag while we offered -PLUS is a downgrade and is refused; so is `p=` with plain SCRAM,
a binding type other than tls-server-end-point, and a `c=` that is not exactly our GS2 header plus
our binding data. `require_channel_binding` offers -PLUS alone.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum

from proxy.auth.credentials import DEFAULT_ITERATIONS, SALT_LENGTH, ScramVerifier
from proxy.auth.scram_messages import (
    CB_TLS_SERVER_END_POINT,
    MECHANISM,
    MECHANISM_PLUS,
    ChannelBindingError,
    ClientFirst,
    CredentialRejection,
    Gs2Header,
    InvalidPasswordError,
    ScramProtocolError,
    ScramStateError,
    b64encode,
    decode_message,
    hmac_sha256,
    is_printable,
    new_nonce,
    parse_client_final,
    parse_client_first,
    sha256,
    xor_bytes,
)

MIN_MOCK_SECRET_LENGTH = 16  # the mock secret is an HMAC key; it must not be guessable


class ServerState(Enum):
    AWAITING_CLIENT_FIRST = "awaiting client-first"
    AWAITING_CLIENT_FINAL = "awaiting client-final"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ServerEvent(Enum):
    CLIENT_FIRST = "client-first"
    CLIENT_FINAL = "client-final"


# The whole state machine: every allowed (state, event) → next state. Anything else is an error.
SERVER_TRANSITIONS: dict[tuple[ServerState, ServerEvent], ServerState] = {
    (
        ServerState.AWAITING_CLIENT_FIRST,
        ServerEvent.CLIENT_FIRST,
    ): ServerState.AWAITING_CLIENT_FINAL,
    (ServerState.AWAITING_CLIENT_FINAL, ServerEvent.CLIENT_FINAL): ServerState.SUCCEEDED,
}


@dataclass(frozen=True)
class _Credentials:
    """The verifiers this login is checked against (one salt and iteration count, the first's);
    `genuine` is False for the mock one."""

    verifiers: tuple[ScramVerifier, ...] = field(repr=False)
    genuine: bool

    @property
    def first(self) -> ScramVerifier:
        return self.verifiers[0]


def mock_verifier(mock_secret: bytes, username: str, iterations: int) -> ScramVerifier:
    """A stable fake verifier for `username`: the salt is HMAC(mock_secret, username)."""
    name = username.encode("utf-8", "surrogatepass")
    return ScramVerifier(
        iterations,
        hmac_sha256(mock_secret, name)[:SALT_LENGTH],
        hmac_sha256(mock_secret, b"stored-key\x00" + name),
        hmac_sha256(mock_secret, b"server-key\x00" + name),
    )


def _select_credentials(
    username: str, verifiers: tuple[ScramVerifier, ...], mock_secret: bytes, iterations: int
) -> _Credentials:
    """Always derive the mock verifier, so that both paths cost the same; use it if needed."""
    mock = mock_verifier(mock_secret, username, iterations)
    if not verifiers:
        return _Credentials((mock,), genuine=False)
    first = verifiers[0]
    if any((v.salt, v.iterations) != (first.salt, first.iterations) for v in verifiers):
        # One exchange sends one salt: a proof can only be checked against verifiers sharing it.
        raise ValueError("the verifiers of one login must share their salt and iteration count")
    return _Credentials(verifiers, genuine=True)


def check_proof(verifier: ScramVerifier, auth_message: bytes, proof: bytes) -> tuple[bool, bytes]:
    """(whether `proof` is right, the server signature): the same work whatever the answer."""
    client_signature = hmac_sha256(verifier.stored_key, auth_message)
    recovered_client_key = xor_bytes(proof, client_signature)
    valid = hmac.compare_digest(sha256(recovered_client_key), verifier.stored_key)
    return valid, hmac_sha256(verifier.server_key, auth_message)


class ScramServer:
    """One client login: SCRAM-SHA-256 (and -PLUS) against a verifier, or a mock exchange."""

    def __init__(
        self,
        username: str,
        verifier: ScramVerifier | Sequence[ScramVerifier] | None,
        *,
        mock_secret: bytes,
        channel_binding: bytes | None = None,
        require_channel_binding: bool = False,
        still_valid: Callable[[ScramVerifier], bool] | None = None,
        late_verifiers: Callable[[], Sequence[ScramVerifier]] | None = None,
        nonce_factory: Callable[[], str] = new_nonce,
        mock_iterations: int = DEFAULT_ITERATIONS,
    ) -> None:
        """`verifier` may be several, sharing one salt and iteration count (a user's credentials
        for several grants): the proof is checked against each, and `matched` says which held.
        `channel_binding` is our certificate's tls-server-end-point hash (None on plaintext);
        `still_valid` is asked at the last step whether the grant of the verifier that matched
        still holds (SECURITY.md row 16); `late_verifiers` is asked, when the proof holds for
        none, for verifiers the caller did not know of at the start (a credential issued a moment
        ago elsewhere): those sharing the salt are checked too. It is asked on a mock exchange as
        well, so that a wrong password costs the same whether or not the user has a credential.
        `mock_iterations` should equal the count real verifiers use."""
        if len(mock_secret) < MIN_MOCK_SECRET_LENGTH:
            raise ValueError(f"mock_secret must be at least {MIN_MOCK_SECRET_LENGTH} bytes")
        if require_channel_binding and channel_binding is None:
            raise ValueError("channel binding cannot be required without binding data (TLS)")
        self.username = username
        verifiers = (
            () if verifier is None
            else (verifier,) if isinstance(verifier, ScramVerifier)
            else tuple(verifier)
        )  # fmt: skip
        self._credentials = _select_credentials(username, verifiers, mock_secret, mock_iterations)
        self._matched: int | None = None
        self._channel_binding = channel_binding
        self._require_channel_binding = require_channel_binding
        self._still_valid, self._late_verifiers = still_valid, late_verifiers
        self._nonce_factory = nonce_factory
        self._state = ServerState.AWAITING_CLIENT_FIRST
        self._client_first: ClientFirst | None = None
        self._server_first = ""
        self._nonce = ""

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def succeeded(self) -> bool:
        return self._state is ServerState.SUCCEEDED

    @property
    def matched(self) -> int | None:
        """The index of the verifier the client proved, once the exchange has succeeded."""
        return self._matched if self.succeeded else None

    def mechanisms(self) -> list[str]:
        """The SASL mechanisms to offer, in our order of preference."""
        if self._channel_binding is None:
            return [MECHANISM]
        if self._require_channel_binding:
            return [MECHANISM_PLUS]
        return [MECHANISM_PLUS, MECHANISM]

    def receive_client_first(self, mechanism: str, data: bytes) -> bytes:
        """The SASLInitialResponse (mechanism and data) → the server-first message."""
        with self._transition(ServerEvent.CLIENT_FIRST):
            if mechanism not in self.mechanisms():
                raise ScramProtocolError("client selected an invalid SASL authentication mechanism")
            first = parse_client_first(decode_message(data))
            self._check_gs2_header(mechanism, first.gs2)
            self._client_first = first
            self._nonce = first.nonce + self._server_nonce()
            verifier = self._credentials.first
            salt = b64encode(verifier.salt)
            self._server_first = f"r={self._nonce},s={salt},i={verifier.iterations}"
            return self._server_first.encode("ascii")

    def receive_client_final(self, data: bytes) -> bytes:
        """The SASLResponse → the server-final message (`v=...`); raises unless the proof holds."""
        with self._transition(ServerEvent.CLIENT_FINAL):
            assert self._client_first is not None  # guaranteed by the transition table
            final = parse_client_final(decode_message(data))
            self._check_channel_binding(self._client_first.gs2, final.channel_binding)
            if not hmac.compare_digest(final.nonce.encode(), self._nonce.encode()):
                raise ScramProtocolError("malformed SCRAM message (nonce does not match)")
            auth_message = f"{self._client_first.bare},{self._server_first},{final.without_proof}"
            matched, signature = self._check_proofs(auth_message.encode("utf-8"), final.proof)
            self._check_outcome(matched)
            self._matched = matched
            return b"v=" + b64encode(signature).encode("ascii")

    def _check_proofs(self, auth_message: bytes, proof: bytes) -> tuple[int | None, bytes]:
        """The index of the verifier `proof` holds for (None if none) and its server signature
        (the first verifier's if none): every verifier is checked, whatever the answer."""
        matched: int | None = None
        signatures = []
        for index, verifier in enumerate(self._credentials.verifiers):
            valid, signature = check_proof(verifier, auth_message, proof)
            signatures.append(signature)
            if valid and matched is None:
                matched = index
        if matched is None and self._late_verifiers is not None:
            late = self._usable_late(tuple(self._late_verifiers()))
            for index, verifier in enumerate(late, start=len(signatures)):
                valid, signature = check_proof(verifier, auth_message, proof)
                signatures.append(signature)
                if valid and matched is None:
                    matched = index
            if late:  # only ever on a genuine exchange (`_usable_late`)
                self._credentials = _Credentials(self._credentials.verifiers + late, genuine=True)
        return matched, signatures[matched or 0]

    def _usable_late(self, late: tuple[ScramVerifier, ...]) -> tuple[ScramVerifier, ...]:
        """The late verifiers to check: none on a mock exchange (the salt sent was not a real
        one); on a genuine one they must share the salt sent, as the first ones do."""
        if not self._credentials.genuine:
            return ()
        first = self._credentials.verifiers[0]
        if any((v.salt, v.iterations) != (first.salt, first.iterations) for v in late):
            raise ValueError("late verifiers must share the salt and iteration count sent")
        return late

    def _check_outcome(self, matched: int | None) -> None:
        """Fail with the one client-visible error; its typed `reason` is for pgwarden only."""
        proof_valid = matched is not None
        verifier = self._credentials.verifiers[matched or 0]
        grant_holds = self._still_valid(verifier) if self._still_valid is not None else True
        if proof_valid and self._credentials.genuine and grant_holds:
            return
        if not self._credentials.genuine:
            reason = CredentialRejection.NO_CREDENTIAL
        elif not proof_valid:
            reason = CredentialRejection.WRONG_PROOF
        else:
            reason = CredentialRejection.GRANT_ENDED
        raise InvalidPasswordError(self.username, reason)

    def _server_nonce(self) -> str:
        nonce = self._nonce_factory()
        if not nonce or not is_printable(nonce):
            raise ValueError("nonce_factory must return printable characters without commas")
        return nonce

    def _check_gs2_header(self, mechanism: str, gs2: Gs2Header) -> None:
        """The GS2 flag must agree with the mechanism and with what we offered."""
        if mechanism == MECHANISM_PLUS:
            if gs2.flag != "p":
                raise ChannelBindingError("SCRAM-SHA-256-PLUS selected without channel binding")
            if gs2.cb_name != CB_TLS_SERVER_END_POINT:
                raise ChannelBindingError("unsupported SCRAM channel binding type")
        elif gs2.flag == "p":
            raise ChannelBindingError("channel binding requested with SCRAM-SHA-256")
        elif gs2.flag == "y" and self._channel_binding is not None:
            raise ChannelBindingError(
                "SCRAM channel binding negotiation error: the client thinks the server does not"
                " support channel binding, but it does (possible downgrade attack)"
            )

    def _check_channel_binding(self, gs2: Gs2Header, received: bytes) -> None:
        """`c=` must be exactly our GS2 header, plus our binding data with the `p` flag."""
        expected = gs2.text.encode("utf-8")
        if gs2.flag == "p":
            assert self._channel_binding is not None  # -PLUS is only offered with binding data
            expected += self._channel_binding
        if not hmac.compare_digest(received, expected):
            raise ChannelBindingError("SCRAM channel binding check failed")

    @contextmanager
    def _transition(self, event: ServerEvent) -> Iterator[None]:
        """Apply `event` by the transition table; any exception leaves the machine FAILED."""
        target = SERVER_TRANSITIONS.get((self._state, event))
        if target is None:
            state, self._state = self._state, ServerState.FAILED
            raise ScramStateError(f"unexpected SCRAM {event.value} message ({state.value})")
        try:
            yield
        except BaseException:
            self._state = ServerState.FAILED
            raise
        self._state = target
