"""Certificates without `ssl`: a development CA and server certificate; PEM loading, clear errors.

`generate_dev_certificates` writes a small CA and a server certificate it signs, so that a
developer can run pgwarden with TLS, and clients can use `sslmode=verify-full sslrootcert=ca.crt`:

    ca.crt      self-signed, basicConstraints CA (critical, pathlen 0), keyUsage keyCertSign/cRLSign
    ca.key      0600
    server.crt  signed by the CA: SAN (DNS names and IP addresses), EKU serverAuth, CA:FALSE
    server.key  0600

Keys are ECDSA P-256, signed with SHA-256. Generation is instant (RSA-2048 takes a noticeable
fraction of a second and yields larger handshakes), every client we serve (libpq/OpenSSL, JDBC,
.NET, Go) accepts it, and the signature hash is SHA-256, so the tls-server-end-point channel
binding of SCRAM-SHA-256-PLUS is well defined (an Ed25519 certificate has no hash: no -PLUS).

The loaders (`load_certificate_chain`, `load_private_key`, `check_key_pair`) exist so that the TLS
layer can say *which* file is wrong and what to do, where OpenSSL only says "PEM lib". Private key
files follow PostgreSQL's ownership and permission rule (see `private_key_permission_problem`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.clock import SYSTEM_CLOCK, Clock
from proxy.errors import PgwardenError

DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "::1")
DEFAULT_VALID_DAYS = 365
CA_CERT_NAME, CA_KEY_NAME = "ca.crt", "ca.key"
SERVER_CERT_NAME, SERVER_KEY_NAME = "server.crt", "server.key"
KEY_FILE_MODE = 0o600  # secrets: readable by pgwarden's user only
CERT_FILE_MODE = 0o644  # public: clients need ca.crt
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)  # how far notBefore is backdated
MAX_DNS_NAME_LENGTH = 253  # RFC 1035, without the trailing dot
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# PostgreSQL's rule for key files: no group/other bits when we own the file; when root owns it
# (a secret mounted by an orchestrator) group read is allowed, so that root:pgwarden 0640 works.
_FORBIDDEN_BITS_OWN_FILE = 0o077
_FORBIDDEN_BITS_ROOT_FILE = 0o037
_ROOT_UID = 0


class CertificateError(PgwardenError):
    """A certificate or key file is missing, unreadable, malformed, or does not fit its partner.

    The message names the file and says what to do; it is for the operator, at startup.
    """

    sqlstate = "F0000"  # config_file_error


@dataclass(frozen=True, slots=True)
class DevCertificates:
    """Where `generate_dev_certificates` wrote its files."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True, slots=True)
class _Validity:
    not_before: datetime
    not_after: datetime

    @classmethod
    def starting(cls, now: datetime, days: int) -> _Validity:
        # Backdated so that a client whose clock runs a little behind ours accepts it at once.
        return cls(now - CLOCK_SKEW_ALLOWANCE, now + timedelta(days=days))


# --- generation ----------------------------------------------------------------------------------


def generate_dev_certificates(
    out_dir: Path,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    valid_days: int = DEFAULT_VALID_DAYS,
    *,
    overwrite: bool = False,
    clock: Clock = SYSTEM_CLOCK,
) -> DevCertificates:
    """Write a development CA and a server certificate for `hostnames` into `out_dir`.

    Refuses (CertificateError) to replace any existing file unless `overwrite`; nothing is written
    then. `hostnames` may mix DNS names and IP addresses (`::1` or `[::1]`).
    """
    names = subject_alternative_names(hostnames)
    if valid_days < 1:
        raise CertificateError(f"valid_days must be at least 1, not {valid_days}")
    paths = DevCertificates(
        out_dir / CA_CERT_NAME, out_dir / CA_KEY_NAME,
        out_dir / SERVER_CERT_NAME, out_dir / SERVER_KEY_NAME,
    )  # fmt: skip
    if not overwrite:
        _refuse_existing(paths)
    validity = _Validity.starting(clock.now(), valid_days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, validity)
    server_cert = _server_certificate(server_key, names, ca_cert, ca_key, validity)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(paths.ca_cert, _cert_pem(ca_cert), CERT_FILE_MODE, overwrite)
    _write(paths.ca_key, _key_pem(ca_key), KEY_FILE_MODE, overwrite)
    _write(paths.server_cert, _cert_pem(server_cert), CERT_FILE_MODE, overwrite)
    _write(paths.server_key, _key_pem(server_key), KEY_FILE_MODE, overwrite)
    return paths


def subject_alternative_names(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses as SAN entries, in order, without duplicates."""
    if isinstance(hostnames, str):  # a bare string is a Sequence too: "localhost" → l, o, c...
        raise CertificateError("hostnames must be a list of names, not one string")
    entries = list(dict.fromkeys(_san_entry(name) for name in hostnames))
    if not entries:
        raise CertificateError("a server certificate needs at least one host name or IP address")
    return entries


def _san_entry(name: str) -> x509.GeneralName:
    candidate = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return x509.DNSName(_dns_name(name))
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise CertificateError(f"{name!r}: a certificate cannot name a scoped (%zone) address")
    return x509.IPAddress(address)


def _dns_name(name: str) -> str:
    """`name` lowercased if it is a valid DNS name (a leading `*.` wildcard allowed)."""
    lowered = name.lower()
    labels = lowered.removeprefix("*.").split(".")
    valid = (
        0 < len(lowered) <= MAX_DNS_NAME_LENGTH
        and all(_DNS_LABEL.fullmatch(label) for label in labels)
        # An all-numeric last label is a mistyped IP address ("127.0.0"), never a host name.
        and not labels[-1].isdigit()
    )
    if not valid:
        raise CertificateError(
            f"{name!r} is neither an IP address nor a DNS name (letters, digits, hyphens and "
            "dots; write internationalised names in their xn-- form)"
        )
    return lowered


def _refuse_existing(paths: DevCertificates) -> None:
    existing = [str(path) for path in _all(paths) if path.exists() or path.is_symlink()]
    if existing:
        raise CertificateError(
            f"refusing to overwrite {', '.join(existing)}: remove them first, or pass --force"
        )


def _all(paths: DevCertificates) -> tuple[Path, ...]:
    return (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _base_builder(
    subject: x509.Name, key: ec.EllipticCurvePrivateKey, validity: _Validity
) -> x509.CertificateBuilder:
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _ca_certificate(key: ec.EllipticCurvePrivateKey, validity: _Validity) -> x509.Certificate:
    # A random suffix keeps two development CAs apart in a trust store or a browser's cache.
    subject = _name(f"pgwarden development CA {secrets.token_hex(4)}")
    builder = (
        _base_builder(subject, key, validity)
        .issuer_name(subject)
        # pathlen 0: this CA signs server certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=False, cert_sign=True), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256())


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    names: list[x509.GeneralName],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    validity: _Validity,
) -> x509.Certificate:
    # Clients match host names against the SAN only; the CN is a label for people.
    builder = (
        _base_builder(_name("pgwarden development server"), key, validity)
        .issuer_name(ca_cert.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # ECDSA keys sign (ECDHE handshakes); keyEncipherment is for RSA key transport only.
        .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


def _cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8, as PostgreSQL's server.key: file permissions protect it.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write `data` to `path` with `mode`, never through a moment with looser permissions."""
    if not overwrite:
        # O_EXCL: fails if the file (or a symlink planted there) appeared since we checked.
        _write_new(path, data, mode)
        return
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write_new(temporary, data, mode)
        os.replace(temporary, path)  # replaces a symlink itself, never the file it points to
    finally:
        temporary.unlink(missing_ok=True)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags, mode)
    except FileExistsError:
        raise CertificateError(f"refusing to overwrite {path}: it appeared while writing") from None
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(file.fileno(), mode)  # the umask may have removed bits we want (0644 → 0600)
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


# --- loading -------------------------------------------------------------------------------------


def certificate_der(path: Path) -> bytes:
    """The first certificate of a PEM file in DER: what a TLS peer sees, for channel binding."""
    return load_certificate_chain(path)[0].public_bytes(serialization.Encoding.DER)


def load_certificate_chain(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, leaf first; CertificateError if there is none."""
    data = _read(path, "certificate")
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        chain = []
    if not chain:
        raise CertificateError(
            f"certificate file {path} holds no PEM certificate: it must contain "
            "'-----BEGIN CERTIFICATE-----' blocks, the server's certificate first"
        )
    return chain


def load_private_key(path: Path) -> PrivateKeyTypes:
    """The unencrypted private key in a PEM file whose permissions protect it."""
    _check_key_file_permissions(path)
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's signal for "this key needs a passphrase"
        raise CertificateError(
            f"private key file {path} is encrypted with a passphrase: pgwarden needs an "
            "unencrypted key (decrypt it with `openssl pkey -in <file> -out <file>`; "
            "keep it mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(
            f"private key file {path} holds no PEM private key it can use "
            "('-----BEGIN PRIVATE KEY-----', an EC or RSA key)"
        ) from None


def check_key_pair(
    certificate: x509.Certificate, key: PrivateKeyTypes, cert_file: Path, key_file: Path
) -> None:
    """CertificateError unless `key` is the private half of `certificate`'s public key."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CertificateError(
            f"private key file {key_file} does not match the certificate in {cert_file}: "
            "configure the key that the certificate was issued for"
        )


def private_key_permission_problem(mode: int, owner: int, current_user: int) -> str | None:
    """Why PostgreSQL would refuse a key file with this mode and owner, or None if it is fine."""
    if owner == current_user:
        if mode & _FORBIDDEN_BITS_OWN_FILE:
            return "has group or world access: run `chmod 600` on it"
        return None
    if owner == _ROOT_UID:
        if mode & _FORBIDDEN_BITS_ROOT_FILE:
            return "is owned by root and has world access or group write: make it 0640 or less"
        return None
    return "must be owned by pgwarden's user or by root"


def _check_key_file_permissions(path: Path) -> None:
    if os.name != "posix":  # Windows has ACLs, not mode bits; PostgreSQL skips the check too
        return
    try:
        status = path.stat()
    except OSError as exc:
        raise _unreadable(path, "private key", exc) from None
    problem = private_key_permission_problem(
        stat.S_IMODE(status.st_mode), status.st_uid, os.geteuid()
    )
    if problem:
        raise CertificateError(f"private key file {path} {problem}")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, what, exc) from None


def _unreadable(path: Path, what: str, exc: OSError) -> CertificateError:
    reason = exc.strerror or type(exc).__name__
    return CertificateError(
        f"cannot read {what} file {path} ({reason}): check the path in the configuration "
        "and that pgwarden's user may read it"
    )
