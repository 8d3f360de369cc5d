"""tls-server-end-point channel binding data from a certificate (RFC 5929 section 4.1)."""

from __future__ import annotations

import base64
import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from proxy.auth import tls_server_end_point

# A self-signed ECDSA-with-SHA1 certificate (made with `openssl req -x509 -sha1`); current
# `cryptography` refuses to sign with SHA-1, so it is kept here as a fixed vector.
SHA1_CERTIFICATE = base64.b64decode(
    "MIIBfDCCASKgAwIBAgIUVyxt+lcFH2fLERHTmNxoyhiBHz4wCQYHKoZIzj0EATAUMRIwEAYDVQQDDAlzaGExLXRl"
    "c3QwHhcNMjYxMTI5MDEwNDA4WhcNMzYxMTI2MDEwNDA4WjAUMRIwEAYDVQQDDAlzaGExLXRlc3QwWTATBgcqhkjO"
    "PQIBBggqhkjOPQMBBwNCAATu7SvrhR7szfU7nMGMr4DNLRJCrZTZX5rFqjZ9lN0zvhfmUFJ2qR+nmH7DefFjFYHa"
    "Cm0oLwY9oSeZZdh1HyI4o1MwUTAdBgNVHQ4EFgQUGQZBoRoXrB874rp2THSFJoboG5IwHwYDVR0jBBgwFoAUGQZB"
    "oRoXrB874rp2THSFJoboG5IwDwYDVR0TAQH/BAUwAwEB/zAJBgcqhkjOPQQBA0kAMEYCIQDgLF32Ivoafg9TTx7+"
    "7SCVI0hu7dUTGLG2PWEJ4Wx/mQIhAIZj9t8US6rR/dhC4cIQLS/6WmlbXkoPsrjN/qoS3pk6"
)


def self_signed(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None,
) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgwarden-test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2034, 1, 1, tzinfo=datetime.UTC))
    )
    return builder.sign(key, algorithm).public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    "algorithm", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()], ids=lambda a: a.name
)
def test_certificate_is_hashed_with_its_signature_hash(
    algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512,
) -> None:
    der = self_signed(ec.generate_private_key(ec.SECP256R1()), algorithm)
    assert tls_server_end_point(der) == hashlib.new(algorithm.name, der).digest()


def test_sha1_signed_certificate_is_hashed_with_sha256() -> None:
    assert tls_server_end_point(SHA1_CERTIFICATE) == hashlib.sha256(SHA1_CERTIFICATE).digest()


def test_certificate_without_a_signature_hash_has_no_binding_data() -> None:
    assert tls_server_end_point(self_signed(ed25519.Ed25519PrivateKey.generate(), None)) is None


def test_garbage_is_not_a_certificate() -> None:
    with pytest.raises(ValueError, match="asn1"):
        tls_server_end_point(b"not a certificate")


def test_certificate_with_an_unknown_signature_algorithm_has_no_binding_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class UnknownAlgorithm:
        @property
        def signature_hash_algorithm(self) -> hashes.HashAlgorithm:
            raise UnsupportedAlgorithm("unknown signature OID")

    monkeypatch.setattr(x509, "load_der_x509_certificate", lambda der: UnknownAlgorithm())
    assert tls_server_end_point(b"any") is None
