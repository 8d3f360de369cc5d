"""Real TLS handshakes over loopback between pgwarden's contexts (proxy/net/tls.py).

Each handshake runs the server side in a thread with blocking `ssl` sockets on 127.0.0.1, both
sides with timeouts, and reports what each side saw (error, ALPN, version, peer certificate),
so that a test checks the refusal on *both* ends. One test does the PostgreSQL way with asyncio:
SSLRequest, `S`, then `start_tls` on both streams. No PostgreSQL, no `openssl` command, no libpq.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.auth import tls_server_end_point
from proxy.net.certs import CertificateError, DevCertificates, generate_dev_certificates
from proxy.net.tls import (
    ALPN_PROTOCOL,
    DirectSslError,
    UpstreamSslAction,
    UpstreamTlsError,
    check_direct_ssl_alpn,
    on_upstream_ssl_refused,
    sends_ssl_request,
    server_channel_binding,
    server_ssl_context,
    upstream_ssl_answer,
    upstream_ssl_context,
)
from proxy.policy.models import UpstreamTlsMode

TIMEOUT = 5.0  # seconds; a loopback handshake takes milliseconds, a hang fails the test
SSL_REQUEST = struct.pack("!ii", 8, 80877103)
ENCRYPTED_MODES = [UpstreamTlsMode.PREFER, UpstreamTlsMode.REQUIRE, UpstreamTlsMode.VERIFY_FULL]


@dataclass
class Side:
    """What one end of a handshake saw."""

    error: BaseException | None = None
    alpn: str | None = None
    version: str | None = None
    peer_der: bytes | None = None


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return generate_dev_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """A second, unrelated CA and server certificate."""
    return generate_dev_certificates(tmp_path_factory.mktemp("other"))


@pytest.fixture(scope="module")
def server_context(certs: DevCertificates) -> ssl.SSLContext:
    return server_ssl_context(certs.server_cert, certs.server_key)


def _serve_once(listener: socket.socket, context: ssl.SSLContext, seen: Side) -> None:
    try:
        connection, _ = listener.accept()
        connection.settimeout(TIMEOUT)
        with context.wrap_socket(connection, server_side=True) as tls:
            seen.alpn, seen.version = tls.selected_alpn_protocol(), tls.version()
            tls.sendall(b"ok")  # the client reads it: both handshakes are complete
    except Exception as exc:  # reported to the test, never an unhandled thread exception
        seen.error = exc


def _connect(port: int, context: ssl.SSLContext, server_hostname: str | None) -> Side:
    seen = Side()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            seen.alpn, seen.version = tls.selected_alpn_protocol(), tls.version()
            seen.peer_der = tls.getpeercert(binary_form=True)
            assert tls.recv(2) == b"ok"
    except (ssl.SSLError, OSError) as exc:
        seen.error = exc
    return seen


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str | None = "localhost"
) -> tuple[Side, Side]:
    """Run one handshake over 127.0.0.1; (what the client saw, what the server saw)."""
    server_side = Side()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        thread = threading.Thread(target=_serve_once, args=(listener, server, server_side))
        thread.start()
        client_side = _connect(listener.getsockname()[1], client, server_hostname)
        thread.join(TIMEOUT * 2)
    assert not thread.is_alive(), "the server side of the handshake hung"
    return client_side, server_side


def verify_full(certs: DevCertificates) -> ssl.SSLContext:
    context = upstream_ssl_context(UpstreamTlsMode.VERIFY_FULL, certs.ca_cert)
    assert context is not None
    return context


def reason(side: Side) -> str | None:
    return getattr(side.error, "reason", None)


# --- verify-full ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1", "::1"])
def test_verify_full_trusts_our_ca_for_each_certified_name(
    server_context: ssl.SSLContext, certs: DevCertificates, hostname: str
) -> None:
    client, server = handshake(server_context, verify_full(certs), hostname)
    assert client.error is None
    assert server.error is None
    assert client.version in {"TLSv1.2", "TLSv1.3"}
    assert client.alpn == server.alpn == ALPN_PROTOCOL


def test_verify_full_refuses_a_host_name_the_certificate_does_not_name(
    server_context: ssl.SSLContext, certs: DevCertificates
) -> None:
    client, server = handshake(server_context, verify_full(certs), "db.example.com")
    assert isinstance(client.error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in client.error.verify_message
    assert isinstance(server.error, ssl.SSLError)


def test_verify_full_refuses_a_certificate_from_another_ca(
    server_context: ssl.SSLContext, other_certs: DevCertificates
) -> None:
    client, server = handshake(server_context, verify_full(other_certs))
    assert isinstance(client.error, ssl.SSLCertVerificationError)
    assert client.error.verify_message == "unable to get local issuer certificate"
    assert isinstance(server.error, ssl.SSLError)


def test_verify_full_without_a_ca_file_uses_the_system_store(
    server_context: ssl.SSLContext,
) -> None:
    context = upstream_ssl_context(UpstreamTlsMode.VERIFY_FULL, None)
    assert context is not None
    client, _ = handshake(server_context, context)
    assert isinstance(client.error, ssl.SSLCertVerificationError)  # no system CA knows ours


# --- prefer and require --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [UpstreamTlsMode.PREFER, UpstreamTlsMode.REQUIRE])
@pytest.mark.parametrize("hostname", ["localhost", "db.example.com", None])
def test_prefer_and_require_encrypt_to_an_untrusted_server(
    other_certs: DevCertificates, mode: UpstreamTlsMode, hostname: str | None
) -> None:
    untrusted = server_ssl_context(other_certs.server_cert, other_certs.server_key)
    context = upstream_ssl_context(mode, None)
    assert context is not None
    client, server = handshake(untrusted, context, hostname)
    assert client.error is None
    assert server.error is None
    assert client.version in {"TLSv1.2", "TLSv1.3"}


def test_disable_has_no_context(certs: DevCertificates) -> None:
    assert upstream_ssl_context(UpstreamTlsMode.DISABLE, certs.ca_cert) is None


@pytest.mark.parametrize("mode", ENCRYPTED_MODES)
def test_upstream_contexts_refuse_old_tls_and_offer_postgresql_alpn(
    mode: UpstreamTlsMode, certs: DevCertificates
) -> None:
    context = upstream_ssl_context(mode, certs.ca_cert)
    assert context is not None
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    verifies = mode is UpstreamTlsMode.VERIFY_FULL
    assert context.check_hostname is verifies
    assert context.verify_mode is (ssl.CERT_REQUIRED if verifies else ssl.CERT_NONE)


def test_a_missing_ca_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "root.crt"
    with pytest.raises(CertificateError, match=r"cannot read certificate file .*root\.crt"):
        upstream_ssl_context(UpstreamTlsMode.VERIFY_FULL, missing)


# --- protocol versions, ALPN, channel binding ----------------------------------------------------


def _client_pinned_to(version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        # Python deprecates naming TLS 1.0/1.1; naming it is the point of this client.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    # OpenSSL 3's default security level would stop the client itself from offering TLS 1.1;
    # level 0 makes it really send a TLS 1.1 ClientHello, so that the refusal is our server's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def test_a_tls_1_1_client_is_refused_by_the_server(server_context: ssl.SSLContext) -> None:
    client, server = handshake(server_context, _client_pinned_to(ssl.TLSVersion.TLSv1_1))
    assert reason(server) == "UNSUPPORTED_PROTOCOL"
    assert reason(client) == "TLSV1_ALERT_PROTOCOL_VERSION"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_clients_are_served(
    server_context: ssl.SSLContext, version: ssl.TLSVersion
) -> None:
    client, server = handshake(server_context, _client_pinned_to(version))
    assert (client.error, server.error) == (None, None)
    assert client.version == server.version == version.name.replace("v1_", "v1.")


def test_server_context_refuses_compression_renegotiation_and_tickets(
    server_context: ssl.SSLContext,
) -> None:
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_NO_TICKET):
        assert server_context.options & option
    assert server_context.num_tickets == 0
    assert server_context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_channel_binding_matches_the_certificate_the_client_saw(
    server_context: ssl.SSLContext, certs: DevCertificates
) -> None:
    client, _ = handshake(server_context, verify_full(certs))
    assert client.peer_der is not None
    expected = server_channel_binding(certs.server_cert)
    assert expected == tls_server_end_point(client.peer_der)
    assert expected == hashlib.sha256(client.peer_der).digest()


def test_a_direct_ssl_client_offering_postgresql_passes_the_alpn_check(
    server_context: ssl.SSLContext,
) -> None:
    context = _client_pinned_to(ssl.TLSVersion.TLSv1_3)
    context.set_alpn_protocols([ALPN_PROTOCOL])
    _, server = handshake(server_context, context)
    check_direct_ssl_alpn(server.alpn)


@pytest.mark.parametrize("offered", [["h2", "http/1.1"], []], ids=["http", "none"])
def test_a_direct_ssl_client_without_postgresql_alpn_is_caught(
    server_context: ssl.SSLContext, offered: list[str]
) -> None:
    context = _client_pinned_to(ssl.TLSVersion.TLSv1_3)
    if offered:
        context.set_alpn_protocols(offered)
    client, server = handshake(server_context, context)
    assert (client.error, server.alpn) == (None, None)  # Python's server lets it through...
    with pytest.raises(DirectSslError) as caught:  # ...so the session must check
        check_direct_ssl_alpn(server.alpn)
    assert caught.value.sqlstate == "08P01"


# --- the PostgreSQL negotiation, with asyncio ----------------------------------------------------


async def _answer_ssl_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
) -> None:
    assert await reader.readexactly(len(SSL_REQUEST)) == SSL_REQUEST
    writer.write(b"S")
    await writer.drain()
    await writer.start_tls(context)
    writer.write(b"hello over TLS")
    await writer.drain()
    writer.close()


async def _negotiate(port: int, context: ssl.SSLContext, mode: UpstreamTlsMode) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(SSL_REQUEST)
    await writer.drain()
    assert upstream_ssl_answer(mode, await reader.readexactly(1)) is UpstreamSslAction.START_TLS
    await writer.start_tls(context, server_hostname="localhost")
    peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert await reader.read() == b"hello over TLS"
    writer.close()
    return bytes(peer)


@pytest.mark.parametrize("mode", ENCRYPTED_MODES)
def test_sslrequest_then_start_tls_with_asyncio(
    server_context: ssl.SSLContext, certs: DevCertificates, mode: UpstreamTlsMode
) -> None:
    client_context = upstream_ssl_context(mode, certs.ca_cert)
    assert client_context is not None

    async def scenario() -> bytes:
        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await _answer_ssl_request(r, w, server_context)

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await asyncio.wait_for(_negotiate(port, client_context, mode), TIMEOUT)

    peer = asyncio.run(scenario())
    assert tls_server_end_point(peer) == server_channel_binding(certs.server_cert)


# --- server context errors -----------------------------------------------------------------------


def test_a_missing_certificate_file_is_named(certs: DevCertificates, tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"cannot read certificate file .*nope\.crt"):
        server_ssl_context(tmp_path / "nope.crt", certs.server_key)


def test_a_missing_key_file_is_named(certs: DevCertificates, tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"cannot read private key file .*nope\.key"):
        server_ssl_context(certs.server_cert, tmp_path / "nope.key")


def test_a_key_of_another_certificate_is_refused(
    certs: DevCertificates, other_certs: DevCertificates
) -> None:
    with pytest.raises(CertificateError, match=r"other\d*/server\.key does not match"):
        server_ssl_context(certs.server_cert, other_certs.server_key)


def test_a_world_readable_key_is_refused(certs: DevCertificates, tmp_path: Path) -> None:
    key = tmp_path / "server.key"
    key.write_bytes(certs.server_key.read_bytes())
    key.chmod(0o644)
    with pytest.raises(CertificateError, match="chmod 600"):
        server_ssl_context(certs.server_cert, key)


def test_a_garbage_certificate_file_is_refused(certs: DevCertificates, tmp_path: Path) -> None:
    bogus = tmp_path / "server.crt"
    bogus.write_text("not a certificate\n")
    with pytest.raises(CertificateError, match="holds no PEM certificate"):
        server_ssl_context(bogus, certs.server_key)


# --- what to do with the upstream's answer to SSLRequest -----------------------------------------


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        (UpstreamTlsMode.DISABLE, UpstreamSslAction.CONTINUE_PLAINTEXT),
        (UpstreamTlsMode.PREFER, UpstreamSslAction.CONTINUE_PLAINTEXT),
        (UpstreamTlsMode.REQUIRE, UpstreamTlsError),
        (UpstreamTlsMode.VERIFY_FULL, UpstreamTlsError),
    ],
)
def test_upstream_refusing_ssl(
    mode: UpstreamTlsMode, outcome: UpstreamSslAction | type[UpstreamTlsError]
) -> None:
    if isinstance(outcome, UpstreamSslAction):
        assert on_upstream_ssl_refused(mode) is outcome
        return
    with pytest.raises(outcome, match="does not support TLS") as caught:
        on_upstream_ssl_refused(mode)
    assert caught.value.sqlstate == "08001"


@pytest.mark.parametrize("mode", ENCRYPTED_MODES)
def test_upstream_accepting_ssl_starts_tls(mode: UpstreamTlsMode) -> None:
    assert upstream_ssl_answer(mode, b"S") is UpstreamSslAction.START_TLS


def test_upstream_answer_n_follows_the_refusal_table() -> None:
    assert upstream_ssl_answer(UpstreamTlsMode.PREFER, b"N") is UpstreamSslAction.CONTINUE_PLAINTEXT
    with pytest.raises(UpstreamTlsError):
        upstream_ssl_answer(UpstreamTlsMode.REQUIRE, b"N")


@pytest.mark.parametrize("mode", ENCRYPTED_MODES)
@pytest.mark.parametrize(
    ("received", "message"),
    [
        (b"S\x00\x00\x00\x08", "unencrypted data after its answer"),  # CVE-2021-23222
        (b"NR\x00\x00\x00\x08\x00\x00\x00\x00", "unencrypted data after its answer"),
        (b"E\x00\x00\x00\x10SFATAL\x00", "error response as its answer to the SSL request"),
        (b"X", "invalid answer"),
        (b"", "invalid answer"),
    ],
)
def test_any_other_answer_aborts(mode: UpstreamTlsMode, received: bytes, message: str) -> None:
    with pytest.raises(UpstreamTlsError, match=message):
        upstream_ssl_answer(mode, received)


def test_disable_sends_no_ssl_request() -> None:
    assert [sends_ssl_request(m) for m in UpstreamTlsMode] == [False, True, True, True]
    with pytest.raises(ValueError, match="disable"):
        upstream_ssl_answer(UpstreamTlsMode.DISABLE, b"N")
