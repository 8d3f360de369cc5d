"""TLS on both sides of a session: SSL contexts, our channel binding, the SSLRequest answer.

Facing clients, pgwarden is a TLS server (`server_ssl_context`): TLS 1.2 or newer, no compression,
no renegotiation, no session tickets, and ALPN "postgresql" so that PostgreSQL 17 clients can use
`sslnegotiation=direct` (they refuse a server that does not select it). A direct-SSL connection
must have negotiated that ALPN (`check_direct_ssl_alpn`), as PostgreSQL requires, so that TLS
traffic meant for another protocol (HTTPS) cannot be replayed into a database session.
`server_channel_binding` is the tls-server-end-point data that SCRAM-SHA-256-PLUS binds to.

Facing the upstream, pgwarden is a TLS client with libpq's `sslmode` meaning
(`upstream_ssl_context`, `upstream_ssl_answer`):

    mode          TLS           certificate checked     upstream answers `N`
    disable       never         -                       (no SSLRequest is sent)
    prefer        if offered    no: encryption only     continue in plaintext
    require       always        no: encryption only     abort
    verify-full   always        CA chain and host name  abort

prefer and require resist only passive eavesdropping: an active attacker can present any
certificate. Unlike libpq, require never turns into verify-ca because a root certificate happens
to be lying around (~/.postgresql/root.crt): what is checked depends on the policy's mode alone.
"""

from __future__ import annotations

import ssl
from enum import StrEnum
from pathlib import Path
from typing import assert_never

from cryptography.hazmat.primitives.serialization import Encoding

from proxy.auth import tls_server_end_point
from proxy.errors import PgwardenError
from proxy.net.certs import (
    CertificateError,
    certificate_der,
    check_key_pair,
    load_certificate_chain,
    load_private_key,
)
from proxy.policy.models import UpstreamTlsMode
from proxy.wire import ERROR_RESPONSE, SSL_ACCEPTED, SSL_REFUSED

ALPN_PROTOCOL = "postgresql"  # PG_ALPN_PROTOCOL in PostgreSQL's pqcomm.h
# PostgreSQL's own default ssl_min_protocol_version (since 13) on both sides; TLS 1.0/1.1 are
# deprecated by RFC 8996.
MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2


class UpstreamTlsError(PgwardenError):
    """TLS to the upstream could not be set up as the policy's mode demands."""

    sqlstate = "08001"  # sqlclient_unable_to_establish_sqlconnection, as libpq reports it


class DirectSslError(PgwardenError):
    """A direct-SSL client (no SSLRequest) did not negotiate the "postgresql" ALPN protocol."""

    sqlstate = "08P01"  # protocol_violation


class UpstreamSslAction(StrEnum):
    """What the session does after reading the upstream's answer to SSLRequest."""

    START_TLS = "start-tls"
    CONTINUE_PLAINTEXT = "continue-plaintext"


# --- facing clients ------------------------------------------------------------------------------


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The context for client connections, with the certificate chain in `cert_file`.

    CertificateError names the file and the fix when a file is missing, unreadable, malformed,
    encrypted, too open (PostgreSQL's key permission rule), or when the key does not match.
    """
    chain = load_certificate_chain(cert_file)
    check_key_pair(chain[0], load_private_key(key_file), cert_file, key_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    # No session tickets, as PostgreSQL: clients open one connection per session and never resume,
    # and a ticket key living as long as the process would weaken TLS 1.2's forward secrecy.
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    try:
        # The password callback only guards against OpenSSL prompting on a terminal: an
        # encrypted key was already refused above with a clearer message.
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(
            f"OpenSSL refused the certificate {cert_file} with the key {key_file} "
            f"({_reason(exc)}): use an ECDSA P-256 or RSA (2048 bits or more) key pair"
        ) from None
    return context


def server_channel_binding(cert_file: Path) -> bytes | None:
    """The tls-server-end-point data of our certificate (the first in `cert_file`).

    None when the certificate's signature has no hash (Ed25519): then SCRAM-SHA-256-PLUS must
    not be offered.
    """
    return tls_server_end_point(certificate_der(cert_file))


def check_direct_ssl_alpn(selected: str | None) -> None:
    """DirectSslError unless a direct-SSL handshake selected ALPN "postgresql".

    `selected` is `SSLObject.selected_alpn_protocol()`. Python's server accepts a client that
    offers only other protocols and then selects none, so this check is what enforces the rule.
    (After an SSLRequest, ALPN is optional: clients before PostgreSQL 17 do not send it.)
    """
    if selected != ALPN_PROTOCOL:
        raise DirectSslError(
            "received direct SSL connection request without ALPN protocol negotiation extension"
        )


# --- facing the upstream -------------------------------------------------------------------------


def upstream_ssl_context(mode: UpstreamTlsMode, ca_file: Path | None) -> ssl.SSLContext | None:
    """The context for connecting to the upstream in `mode`; None for disable.

    verify-full trusts the CAs in `ca_file`, or the system's store when it is None; the caller
    passes the upstream's host name as `server_hostname`. prefer and require ignore `ca_file`.
    """
    match mode:
        case UpstreamTlsMode.DISABLE:
            return None
        case UpstreamTlsMode.PREFER | UpstreamTlsMode.REQUIRE:
            context = _encrypting_context()
        case UpstreamTlsMode.VERIFY_FULL:
            context = _verifying_context(ca_file)
        case _:
            assert_never(mode)
    _harden(context)
    return context


def sends_ssl_request(mode: UpstreamTlsMode) -> bool:
    """Whether pgwarden asks the upstream for TLS at all (every mode but disable)."""
    return mode is not UpstreamTlsMode.DISABLE


def upstream_ssl_answer(mode: UpstreamTlsMode, received: bytes) -> UpstreamSslAction:
    """Decide from everything the upstream sent after our SSLRequest, before any handshake.

    `S` alone: start TLS. `N` alone: `on_upstream_ssl_refused`. `S` or `N` followed by more bytes
    means someone injected plaintext that would be read as if TLS protected it (CVE-2021-23222):
    abort. `E` (an ErrorResponse) is not parsed, since the server is not authenticated yet: abort,
    as libpq does. Raises UpstreamTlsError to abort; ValueError if mode is disable (no SSLRequest).
    """
    if not sends_ssl_request(mode):
        raise ValueError("no SSLRequest is sent upstream in disable mode")
    if received == SSL_ACCEPTED:
        return UpstreamSslAction.START_TLS
    if received == SSL_REFUSED:
        return on_upstream_ssl_refused(mode)
    if received[:1] in (SSL_ACCEPTED, SSL_REFUSED):
        # CVE-2021-23222: these bytes arrived unencrypted yet would be read as if TLS had
        # protected them (after `N` a legitimate server sends nothing either).
        raise UpstreamTlsError(
            "the server sent unencrypted data after its answer to the SSL request"
        )
    if received and received[0] == ERROR_RESPONSE:
        raise UpstreamTlsError("the server sent an error response as its answer to the SSL request")
    raise UpstreamTlsError("the server sent an invalid answer to the SSL request")


def on_upstream_ssl_refused(mode: UpstreamTlsMode) -> UpstreamSslAction:
    """What to do when the upstream answers `N` (it does not do TLS), per libpq's sslmode.

    disable and prefer accept plaintext: continue. require and verify-full raise UpstreamTlsError,
    before any password is sent.
    """
    match mode:
        case UpstreamTlsMode.DISABLE | UpstreamTlsMode.PREFER:
            return UpstreamSslAction.CONTINUE_PLAINTEXT
        case UpstreamTlsMode.REQUIRE | UpstreamTlsMode.VERIFY_FULL:
            raise UpstreamTlsError(
                f"the server does not support TLS, but the policy requires it (tls: {mode})"
            )
        case _:
            assert_never(mode)


def _encrypting_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # libpq's prefer/require: encrypt, accept any certificate (check_hostname must go first).
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _verifying_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True  # matches SAN DNS names and IP addresses, never the CN
    if ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return context
    # Loaded from what we parsed, so that a bad file gets CertificateError's message, not "PEM lib".
    der = b"".join(cert.public_bytes(Encoding.DER) for cert in load_certificate_chain(ca_file))
    try:
        context.load_verify_locations(cadata=der)
    except ssl.SSLError as exc:
        raise CertificateError(f"OpenSSL refused the CA file {ca_file} ({_reason(exc)})") from None
    return context


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = MINIMUM_TLS_VERSION
    # Compression leaks secrets through sizes (CRIME); renegotiation has had its own attacks and
    # PostgreSQL has never used it.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # libpq 17 always offers it; a PostgreSQL 17 server requires it for direct SSL.
    context.set_alpn_protocols([ALPN_PROTOCOL])


def _no_passphrase() -> bytes:
    return b""


def _reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
    return str(reason).replace("_", " ").lower()
