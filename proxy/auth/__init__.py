"""Authentication, sans-I/O: SCRAM-SHA-256 both ways, verifiers, SASLprep, upstream MD5.

- `ScramServer` (scram_server): pgwarden checks a client's temporary credential.
- `ScramClient` (scram_client): pgwarden logs in to the upstream Postgres.
- `credentials`: Postgres-format verifiers, random passwords, PBKDF2 and its cache.
- `saslprep`: RFC 4013 as Postgres applies it. `md5`: the upstream MD5 response.

Bytes and strings in, bytes out: no sockets, no event loop; the session layer does the I/O and
turns `AuthError`s into ErrorResponses. See each module's docstring for its mechanism.
"""

from __future__ import annotations

from proxy.auth.credentials import (
    DEFAULT_ITERATIONS,
    SaltedPasswordCache,
    ScramVerifier,
    VerifierFormatError,
    generate_password,
    make_verifier,
    salted_password,
)
from proxy.auth.md5 import md5_password_hash, md5_password_response
from proxy.auth.saslprep import prepare_password, saslprep
from proxy.auth.scram_client import MAX_UPSTREAM_SCRAM_ITERATIONS, ClientState, ScramClient
from proxy.auth.scram_messages import (
    MECHANISM,
    MECHANISM_PLUS,
    AuthError,
    ChannelBindingError,
    CredentialRejection,
    InvalidPasswordError,
    ScramProtocolError,
    ScramStateError,
    UpstreamAuthError,
    tls_server_end_point,
)
from proxy.auth.scram_server import ScramServer, ServerState

__all__ = [
    "DEFAULT_ITERATIONS",
    "MAX_UPSTREAM_SCRAM_ITERATIONS",
    "MECHANISM",
    "MECHANISM_PLUS",
    "AuthError",
    "ChannelBindingError",
    "ClientState",
    "CredentialRejection",
    "InvalidPasswordError",
    "SaltedPasswordCache",
    "ScramClient",
    "ScramProtocolError",
    "ScramServer",
    "ScramStateError",
    "ScramVerifier",
    "ServerState",
    "UpstreamAuthError",
    "VerifierFormatError",
    "generate_password",
    "make_verifier",
    "md5_password_hash",
    "md5_password_response",
    "prepare_password",
    "salted_password",
    "saslprep",
    "tls_server_end_point",
]
