"""The `identity:` section of the server config: `identity: {oidc: {...}}`.

Pure: parsed with `proxy.policy.fields` like the rest of the config, checked, never fetched
(the discovery document is read when the server starts, `discovery.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from proxy.policy.fields import Fields, secret_ref
from proxy.policy.models import SecretRef

DEFAULT_SCOPES = ("openid", "profile", "email", "groups", "offline_access")
DEFAULT_SESSION_TTL = timedelta(hours=1)
# Long enough for a working day if wanted; a session outliving that should be a refresh.
MAX_SESSION_TTL = timedelta(hours=24)
MIN_SESSION_TTL = timedelta(minutes=1)
MAX_CLAIM_NAME = 64
# `groups_claim: none`: the provider sends no groups (Google Workspace's ID tokens carry none);
# a person's groups are then only those the YAML gives their name. A word rather than an empty
# value, so that a forgotten value is not taken for it.
NO_GROUPS_CLAIM = "none"


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """`identity.oidc`: the provider pgwarden is registered with, and how to read its tokens."""

    issuer: str
    client_id: str
    client_secret: SecretRef
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    username_claim: str = "preferred_username"  # falls back to `email` when absent
    groups_claim: str | None = "groups"  # None (`groups_claim: none`): groups from the YAML only
    allowed_domains: frozenset[str] = frozenset()  # empty: any (else email's domain, verified)
    session_ttl: timedelta = DEFAULT_SESSION_TTL
    device_flow: bool | None = None  # None: on when the provider offers it


def parse_identity(f: Fields | None, base_dir: Path | None) -> OidcSettings | None:
    """The section's settings, or None when absent (or invalid: the problems are reported)."""
    if f is None:
        return None
    oidc = f.section("oidc", required=True)
    f.finish()
    return None if oidc is None else _oidc(oidc, base_dir)


def _oidc(f: Fields, base_dir: Path | None) -> OidcSettings | None:
    issuer = f.string("issuer", required=True, check=check_issuer)
    client_id = f.string("client_id", required=True, check=check_claim_text)
    secret = secret_ref(f, "client_secret", base_dir)
    scopes = f.names("scopes") or DEFAULT_SCOPES
    if "openid" not in scopes:
        f.problem("scopes", "must include openid")
    username = f.string("username_claim", default="preferred_username", check=check_claim_text)
    groups = f.string("groups_claim", default="groups", check=check_claim_text)
    groups_claim = None if groups == NO_GROUPS_CLAIM else groups
    domains = _domains(f)
    ttl = f.duration("session_ttl", default=DEFAULT_SESSION_TTL, maximum=MAX_SESSION_TTL)
    if ttl is not None and ttl < MIN_SESSION_TTL:
        f.problem("session_ttl", "must be at least 1m")
    device_flow = f.boolean("device_flow", default=True) if f.has("device_flow") else None
    f.finish()
    if not (issuer and client_id and secret and username and groups and ttl):
        return None
    if domains is None or (f.has("device_flow") and device_flow is None):
        return None
    return OidcSettings(issuer, client_id, secret, scopes, username, groups_claim, domains, ttl,
                        device_flow)  # fmt: skip


def _domains(f: Fields) -> frozenset[str] | None:
    if not f.has("allowed_domains"):
        return frozenset()
    names = f.names("allowed_domains")
    if names is None:
        return None
    return frozenset(name.lower() for name in names)


def check_issuer(text: str) -> str | None:
    """An https URL (http only on loopback: a test or a local provider), no query or fragment."""
    parts = urlsplit(text)
    if parts.query or parts.fragment or not parts.hostname:
        return "must be the provider's issuer URL, e.g. https://login.example.com/realms/acme"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost"):
        return None
    return "must be an https URL (http is allowed only on loopback)"


def check_claim_text(text: str) -> str | None:
    if not text or len(text) > MAX_CLAIM_NAME or not text.isprintable() or " " in text:
        return f"must be 1 to {MAX_CLAIM_NAME} printable characters without spaces"
    return None
