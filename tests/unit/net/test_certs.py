"""Development certificates and the PEM loaders (proxy/net/certs.py), checked without `ssl`.

The generated chain is verified with `cryptography`'s RFC 5280 / CA-Browser-Forum verifier, which
is stricter than OpenSSL's default (it insists on SAN, key identifiers, critical basicConstraints),
so a certificate that passes here is accepted by libpq, JDBC and Go alike.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from proxy.auth import tls_server_end_point
from proxy.net.certs import (
    CertificateError,
    DevCertificates,
    certificate_der,
    check_key_pair,
    generate_dev_certificates,
    load_certificate_chain,
    load_private_key,
    private_key_permission_problem,
    subject_alternative_names,
)
from tests.fixtures.clock import DEFAULT_START, FakeClock

LOOPBACK_V4 = ipaddress.ip_address("127.0.0.1")
LOOPBACK_V6 = ipaddress.ip_address("::1")


@pytest.fixture
def certs(tmp_path: Path) -> DevCertificates:
    return generate_dev_certificates(tmp_path / "certs", clock=FakeClock())


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def server_verifier(certs: DevCertificates, subject: verification.Subject) -> None:
    """Verify server.crt for `subject` against ca.crt alone, at the fake clock's time."""
    store = verification.Store([load(certs.ca_cert)])
    verifier = verification.PolicyBuilder().store(store).time(DEFAULT_START).build_server_verifier
    verifier(subject).verify(load(certs.server_cert), [])


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[None]:
    previous = os.umask(request.param)
    yield
    os.umask(previous)


# --- what is generated ---------------------------------------------------------------------------


def test_the_four_files_are_written_where_promised(certs: DevCertificates) -> None:
    directory = certs.ca_cert.parent
    assert certs == DevCertificates(
        directory / "ca.crt",
        directory / "ca.key",
        directory / "server.crt",
        directory / "server.key",
    )
    assert sorted(p.name for p in directory.iterdir()) == [
        "ca.crt", "ca.key", "server.crt", "server.key",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "subject",
    [
        x509.DNSName("localhost"),
        x509.IPAddress(LOOPBACK_V4),
        x509.IPAddress(LOOPBACK_V6),
    ],
    ids=str,
)
def test_server_certificate_verifies_against_the_ca_for_each_default_name(
    certs: DevCertificates, subject: verification.Subject
) -> None:
    server_verifier(certs, subject)


def test_server_certificate_does_not_verify_for_another_name(certs: DevCertificates) -> None:
    with pytest.raises(verification.VerificationError):
        server_verifier(certs, x509.DNSName("db.example.com"))


def test_server_certificate_does_not_verify_against_another_ca(
    certs: DevCertificates, tmp_path: Path
) -> None:
    other = generate_dev_certificates(tmp_path / "other", clock=FakeClock())
    store = verification.Store([load(other.ca_cert)])
    verifier = verification.PolicyBuilder().store(store).time(DEFAULT_START)
    with pytest.raises(verification.VerificationError):
        verifier.build_server_verifier(x509.DNSName("localhost")).verify(
            load(certs.server_cert), []
        )


def test_ca_is_a_ca_that_may_only_sign_server_certificates(certs: DevCertificates) -> None:
    ca = load(certs.ca_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    assert usage.key_cert_sign
    assert not usage.digital_signature
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)


def test_server_certificate_is_signed_by_the_ca_for_server_authentication(
    certs: DevCertificates,
) -> None:
    server, ca = load(certs.server_cert), load(certs.ca_cert)
    server.verify_directly_issued_by(ca)
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_server_certificate_names_exactly_the_requested_hosts(certs: DevCertificates) -> None:
    san = load(certs.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.value.get_values_for_type(x509.IPAddress) == [LOOPBACK_V4, LOOPBACK_V6]


def test_keys_are_ecdsa_p256_and_certificates_are_signed_with_sha256(
    certs: DevCertificates,
) -> None:
    key = load_private_key(certs.server_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    for path in (certs.ca_cert, certs.server_cert):
        assert isinstance(load(path).signature_hash_algorithm, hashes.SHA256)


def test_channel_binding_data_of_the_server_certificate_is_its_sha256(
    certs: DevCertificates,
) -> None:
    der = certificate_der(certs.server_cert)
    assert tls_server_end_point(der) == hashlib.sha256(der).digest()


def test_validity_starts_slightly_before_the_clock_and_lasts_the_requested_days(
    tmp_path: Path,
) -> None:
    generated = generate_dev_certificates(tmp_path, valid_days=30, clock=FakeClock())
    for path in (generated.ca_cert, generated.server_cert):
        certificate = load(path)
        assert certificate.not_valid_before_utc == DEFAULT_START - timedelta(minutes=5)
        assert certificate.not_valid_after_utc == DEFAULT_START + timedelta(days=30)


def test_two_generations_make_different_cas(tmp_path: Path) -> None:
    first = load(generate_dev_certificates(tmp_path / "a", clock=FakeClock()).ca_cert)
    second = load(generate_dev_certificates(tmp_path / "b", clock=FakeClock()).ca_cert)
    assert first.subject != second.subject
    assert first.serial_number != second.serial_number


# --- file permissions and overwriting ------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077], indirect=True, ids=oct)
@pytest.mark.usefixtures("umask")
def test_keys_are_0600_and_certificates_0644_whatever_the_umask(tmp_path: Path) -> None:
    generated = generate_dev_certificates(tmp_path, clock=FakeClock())
    assert mode_of(generated.ca_key) == mode_of(generated.server_key) == 0o600
    assert mode_of(generated.ca_cert) == mode_of(generated.server_cert) == 0o644


def test_existing_files_are_not_overwritten_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "server.key").write_bytes(b"the operator's key")
    with pytest.raises(CertificateError, match=r"refusing to overwrite .*server\.key"):
        generate_dev_certificates(tmp_path, clock=FakeClock())
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]
    assert (tmp_path / "server.key").read_bytes() == b"the operator's key"


def test_a_symlink_in_place_of_a_key_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    (tmp_path / "ca.key").symlink_to(target)
    with pytest.raises(CertificateError, match="refusing to overwrite"):
        generate_dev_certificates(tmp_path, clock=FakeClock())
    assert target.read_bytes() == b"precious"


def test_overwrite_replaces_every_file_with_private_keys(certs: DevCertificates) -> None:
    old_ca = certs.ca_cert.read_bytes()
    certs.server_key.chmod(0o644)
    again = generate_dev_certificates(certs.ca_cert.parent, overwrite=True, clock=FakeClock())
    assert again == certs
    assert again.ca_cert.read_bytes() != old_ca
    assert mode_of(again.server_key) == 0o600
    check_key_pair(
        load(again.server_cert),
        load_private_key(again.server_key),
        again.server_cert,
        again.server_key,
    )
    assert sorted(p.name for p in again.ca_cert.parent.iterdir()) == [
        "ca.crt", "ca.key", "server.crt", "server.key",
    ]  # fmt: skip


# --- host names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        ("localhost", x509.DNSName("localhost")),
        ("DB.Example.COM", x509.DNSName("db.example.com")),
        ("*.db.internal", x509.DNSName("*.db.internal")),
        ("xn--bcher-kva.example", x509.DNSName("xn--bcher-kva.example")),
        ("10.1.2.3", x509.IPAddress(ipaddress.ip_address("10.1.2.3"))),
        ("::1", x509.IPAddress(LOOPBACK_V6)),
        ("[2001:db8::5]", x509.IPAddress(ipaddress.ip_address("2001:db8::5"))),
    ],
)
def test_host_names_become_dns_names_or_ip_addresses(name: str, entry: x509.GeneralName) -> None:
    assert subject_alternative_names([name]) == [entry]


def test_duplicate_host_names_are_listed_once() -> None:
    names = subject_alternative_names(["localhost", "LOCALHOST", "127.0.0.1", "127.0.0.1"])
    assert names == [x509.DNSName("localhost"), x509.IPAddress(LOOPBACK_V4)]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "bad host",
        "-leading.example",
        "trailing-.example",
        "double..dot",
        "127.0.0",  # a mistyped address is not a host name
        "bücher.example",  # IDNs must be given as A-labels
        "a" * 64 + ".example",
        "x." * 127 + "com",  # 257 characters
        "db.example.",
        "db\n.example",
        "fe80::1%eth0",
        "*",
        "db.*.example",
    ],
)
def test_invalid_host_names_are_refused(name: str) -> None:
    with pytest.raises(CertificateError):
        subject_alternative_names([name])


def test_a_single_string_or_no_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="not one string"):
        subject_alternative_names("localhost")
    with pytest.raises(CertificateError, match="at least one"):
        generate_dev_certificates(tmp_path, hostnames=[], clock=FakeClock())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("days", [0, -1])
def test_validity_must_be_at_least_a_day(tmp_path: Path, days: int) -> None:
    with pytest.raises(CertificateError, match="valid_days"):
        generate_dev_certificates(tmp_path, valid_days=days, clock=FakeClock())


# --- loading -------------------------------------------------------------------------------------


def test_certificate_der_is_the_first_certificate_of_a_chain(
    certs: DevCertificates, tmp_path: Path
) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(certs.server_cert.read_bytes() + certs.ca_cert.read_bytes())
    assert certificate_der(chain) == load(certs.server_cert).public_bytes(
        serialization.Encoding.DER
    )
    assert [c.subject for c in load_certificate_chain(chain)] == [
        load(certs.server_cert).subject,
        load(certs.ca_cert).subject,
    ]


def test_a_missing_certificate_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(
        CertificateError, match=f"cannot read certificate file {re.escape(str(missing))}"
    ):
        certificate_der(missing)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello", b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"],
)
def test_a_file_without_a_pem_certificate_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.crt"
    path.write_bytes(content)
    with pytest.raises(CertificateError, match=f"{re.escape(str(path))} holds no PEM certificate"):
        load_certificate_chain(path)


def test_a_certificate_is_not_taken_for_a_key(certs: DevCertificates, tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(certs.server_cert.read_bytes())
    path.chmod(0o600)
    with pytest.raises(CertificateError, match=f"{re.escape(str(path))} holds no PEM private key"):
        load_private_key(path)


def test_an_encrypted_key_is_refused_with_a_way_out(tmp_path: Path) -> None:
    path = tmp_path / "encrypted.key"
    key = ec.generate_private_key(ec.SECP256R1())
    encryption = serialization.BestAvailableEncryption(b"passphrase")
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(CertificateError, match=r"encrypted with a passphrase.*openssl pkey"):
        load_private_key(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o666])
def test_a_key_readable_by_others_is_refused(certs: DevCertificates, mode: int) -> None:
    certs.server_key.chmod(mode)
    with pytest.raises(CertificateError, match=r"server\.key has group or world access.*chmod 600"):
        load_private_key(certs.server_key)


def test_a_key_that_does_not_match_the_certificate_is_named(certs: DevCertificates) -> None:
    with pytest.raises(CertificateError, match=r"ca\.key does not match the certificate in .*"):
        check_key_pair(
            load(certs.server_cert), load_private_key(certs.ca_key), certs.server_cert, certs.ca_key
        )


ME, ROOT, SOMEONE = 1000, 0, 1001


@pytest.mark.parametrize(
    ("mode", "owner", "allowed"),
    [
        (0o600, ME, True),
        (0o400, ME, True),
        (0o640, ME, False),
        (0o604, ME, False),
        (0o600, ROOT, True),
        (0o640, ROOT, True),  # a secret mounted root:pgwarden 0640
        (0o660, ROOT, False),
        (0o644, ROOT, False),
        (0o600, SOMEONE, False),
    ],
)
def test_key_file_permissions_follow_postgres(mode: int, owner: int, allowed: bool) -> None:
    assert (private_key_permission_problem(mode, owner, ME) is None) is allowed
