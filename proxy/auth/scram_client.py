"""SCRAM-SHA-256(-PLUS) client side: how pgwarden logs in to the upstream Postgres.

A sans-I/O state machine, one per upstream login. The upstream is an untrusted peer (SECURITY.md
row 19): every message it sends is size-capped and parsed strictly, its iteration count is capped
(`MAX_UPSTREAM_SCRAM_ITERATIONS`), its nonce must extend ours, its signature is checked in
constant time; any failure raises `UpstreamAuthError` (08001), never a crash.

    client = ScramClient(user, password, cache=cache)
    mechanism = client.select_mechanism(offered)         # from AuthenticationSASL
    send SASLInitialResponse(mechanism, client.client_first())
    client.parse_server_first(data)                      # from AuthenticationSASLContinue
    salted = await loop.run_in_executor(None, client.compute_salted_password)   # PBKDF2
    send SASLResponse(client.client_final(salted))
    client.receive_server_final(data)                    # from AuthenticationSASLFinal

`compute_salted_password` is the expensive step (PBKDF2, `iterations` HMACs); it consults and fills
the optional `SaltedPasswordCache`, and it is the only call worth moving off the event loop.
`receive_server_first` does parse + PBKDF2 + client-final in one synchronous call, for tests and
for callers that do not mind blocking.

    INITIAL --client-first--> AWAITING_SERVER_FIRST --server-first--> HAVE_SERVER_FIRST
      --client-final--> AWAITING_SERVER_FINAL --server-final--> SUCCEEDED      (errors → FAILED)

The `n=` user name is empty by default, like libpq's (Postgres ignores it and uses the startup
packet's); `send_username=True` puts the escaped name there (the RFC 7677 example does).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum

from proxy.auth.credentials import SaltedPasswordCache, salted_password
from proxy.auth.scram_messages import (
    CB_TLS_SERVER_END_POINT,
    KEY_LENGTH,
    MECHANISM,
    MECHANISM_PLUS,
    ScramProtocolError,
    ServerFirst,
    UpstreamAuthError,
    b64encode,
    client_key,
    decode_message,
    escape_saslname,
    hmac_sha256,
    is_printable,
    new_nonce,
    parse_server_final,
    parse_server_first,
    server_key,
    sha256,
    xor_bytes,
)

# A malicious or compromised upstream could name a huge iteration count to make every login burn
# seconds of CPU (pgbouncer CVE-2026-6665). 100k is ~25x Postgres's default of 4096 and still well
# under a second of PBKDF2; raise it per upstream if an operator configures more.
MAX_UPSTREAM_SCRAM_ITERATIONS = 100_000


class ClientState(Enum):
    INITIAL = "initial"
    AWAITING_SERVER_FIRST = "awaiting server-first"
    HAVE_SERVER_FIRST = "have server-first"
    AWAITING_SERVER_FINAL = "awaiting server-final"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ClientEvent(Enum):
    SELECT_MECHANISM = "mechanism selection"
    CLIENT_FIRST = "client-first"
    SERVER_FIRST = "server-first"
    CLIENT_FINAL = "client-final"
    SERVER_FINAL = "server-final"


# The whole state machine: every allowed (state, event) → next state. Anything else is an error.
CLIENT_TRANSITIONS: dict[tuple[ClientState, ClientEvent], ClientState] = {
    (ClientState.INITIAL, ClientEvent.SELECT_MECHANISM): ClientState.INITIAL,
    (ClientState.INITIAL, ClientEvent.CLIENT_FIRST): ClientState.AWAITING_SERVER_FIRST,
    (ClientState.AWAITING_SERVER_FIRST, ClientEvent.SERVER_FIRST): ClientState.HAVE_SERVER_FIRST,
    (ClientState.HAVE_SERVER_FIRST, ClientEvent.CLIENT_FINAL): ClientState.AWAITING_SERVER_FINAL,
    (ClientState.AWAITING_SERVER_FINAL, ClientEvent.SERVER_FINAL): ClientState.SUCCEEDED,
}


class ScramClient:
    """One login to an upstream server with SCRAM-SHA-256 (or -PLUS with channel binding)."""

    def __init__(
        self,
        username: str,
        password: str | bytes,
        *,
        channel_binding: tuple[str, bytes] | None = None,
        max_iterations: int = MAX_UPSTREAM_SCRAM_ITERATIONS,
        cache: SaltedPasswordCache | None = None,
        send_username: bool = False,
        nonce_factory: Callable[[], str] = new_nonce,
    ) -> None:
        """`channel_binding` is ("tls-server-end-point", hash of the upstream's certificate)."""
        if channel_binding is not None and channel_binding[0] != CB_TLS_SERVER_END_POINT:
            raise ValueError(f"only {CB_TLS_SERVER_END_POINT} channel binding is supported")
        self.username = username
        self._password = password.encode("utf-8") if isinstance(password, str) else password
        self._channel_binding = channel_binding
        self._max_iterations = max_iterations
        self._cache = cache
        self._send_username = send_username
        self._nonce_factory = nonce_factory
        self._mechanism = MECHANISM_PLUS if channel_binding else MECHANISM
        self._state = ClientState.INITIAL
        self._gs2_header = ""
        self._nonce = ""
        self._bare = ""
        self._server_first: ServerFirst | None = None
        self._server_signature = b""

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def mechanism(self) -> str:
        return self._mechanism

    def select_mechanism(self, offered: Sequence[str]) -> str:
        """Choose from the upstream's AuthenticationSASL list; -PLUS when we can bind."""
        with self._transition(ClientEvent.SELECT_MECHANISM):
            if self._channel_binding is not None and MECHANISM_PLUS in offered:
                self._mechanism = MECHANISM_PLUS
            elif MECHANISM in offered:
                self._mechanism = MECHANISM
            else:
                raise UpstreamAuthError("upstream offers no supported SASL mechanism")
            return self._mechanism

    def client_first(self) -> bytes:
        """The client-first message (the data of SASLInitialResponse)."""
        with self._transition(ClientEvent.CLIENT_FIRST):
            nonce = self._nonce_factory()
            if not nonce or not is_printable(nonce):
                raise ValueError("nonce_factory must return printable characters without commas")
            self._gs2_header = self._make_gs2_header()
            name = escape_saslname(self.username) if self._send_username else ""
            self._nonce = nonce
            self._bare = f"n={name},r={nonce}"
            return (self._gs2_header + self._bare).encode("utf-8")

    def parse_server_first(self, data: bytes) -> ServerFirst:
        """Check the upstream's server-first message; then compute the salted password."""
        with self._transition(ClientEvent.SERVER_FIRST):
            first = parse_server_first(decode_message(data))
            if len(first.nonce) <= len(self._nonce) or not first.nonce.startswith(self._nonce):
                raise UpstreamAuthError("upstream SCRAM nonce does not extend ours")
            if first.iterations > self._max_iterations:
                raise UpstreamAuthError(
                    f"upstream SCRAM iteration count {first.iterations} is above the limit"
                    f" of {self._max_iterations}"
                )
            self._server_first = first
            return first

    def cached_salted_password(self) -> bytes | None:
        """The salted password from the cache, if it holds it: no PBKDF2, so a caller can skip
        the thread hop of `compute_salted_password` on every login after the first."""
        first = self._server_first
        if first is None or self._cache is None:
            return None
        return self._cache.get(self._password, first.salt, first.iterations)

    def compute_salted_password(self) -> bytes:
        """PBKDF2 for the upstream's salt and count, through the cache. Blocking; thread-safe."""
        first = self._server_first
        if first is None:
            raise UpstreamAuthError("salted password requested before server-first")
        if self._cache is not None:
            cached = self._cache.get(self._password, first.salt, first.iterations)
            if cached is not None:
                return cached
        salted = salted_password(self._password, first.salt, first.iterations)
        if self._cache is not None:
            self._cache.put(self._password, first.salt, first.iterations, salted)
        return salted

    def client_final(self, salted: bytes) -> bytes:
        """The client-final message (the data of SASLResponse), with our proof."""
        with self._transition(ClientEvent.CLIENT_FINAL):
            assert self._server_first is not None  # guaranteed by the transition table
            if len(salted) != KEY_LENGTH:
                raise ValueError(f"a salted password is {KEY_LENGTH} bytes")
            binding = self._gs2_header.encode("utf-8")
            if self._gs2_header.startswith("p="):
                assert self._channel_binding is not None  # p= is only sent with binding data
                binding += self._channel_binding[1]
            without_proof = f"c={b64encode(binding)},r={self._server_first.nonce}"
            auth_message = f"{self._bare},{self._server_first.text},{without_proof}".encode()
            key = client_key(salted)
            proof = xor_bytes(key, hmac_sha256(sha256(key), auth_message))
            self._server_signature = hmac_sha256(server_key(salted), auth_message)
            return f"{without_proof},p={b64encode(proof)}".encode("ascii")

    def receive_server_first(self, data: bytes) -> bytes:
        """parse_server_first + compute_salted_password + client_final, synchronously."""
        self.parse_server_first(data)
        return self.client_final(self.compute_salted_password())

    def receive_server_final(self, data: bytes) -> None:
        """Check the upstream's server-final message: it must prove it knows our verifier."""
        with self._transition(ClientEvent.SERVER_FINAL):
            final = parse_server_final(decode_message(data))
            if final.error is not None:
                raise UpstreamAuthError(
                    "upstream rejected SCRAM authentication", detail=f"e={final.error}"
                )
            assert final.signature is not None  # parse_server_final returns one or the other
            if not hmac.compare_digest(final.signature, self._server_signature):
                raise UpstreamAuthError("upstream SCRAM server signature is wrong")

    def _make_gs2_header(self) -> str:
        if self._mechanism == MECHANISM_PLUS:
            return f"p={CB_TLS_SERVER_END_POINT},,"
        return "y,," if self._channel_binding is not None else "n,,"

    @contextmanager
    def _transition(self, event: ClientEvent) -> Iterator[None]:
        """Apply `event` by the table; errors leave the machine FAILED as `UpstreamAuthError`."""
        target = CLIENT_TRANSITIONS.get((self._state, event))
        if target is None:
            state, self._state = self._state, ClientState.FAILED
            raise UpstreamAuthError(f"unexpected SCRAM {event.value} ({state.value})")
        try:
            yield
        except ScramProtocolError as exc:
            self._state = ClientState.FAILED
            raise UpstreamAuthError(f"upstream sent a {exc.message}", detail=exc.detail) from exc
        except BaseException:
            self._state = ClientState.FAILED
            raise
        self._state = target
