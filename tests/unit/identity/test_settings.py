"""The `identity.oidc` config section: defaults, and the mistakes it refuses."""

from __future__ import annotations

from datetime import timedelta

import pytest

from proxy.config import ConfigError, parse_config

BASE = """
paths: {state: /tmp/pgw-state.db, audit_log: /tmp/pgw-audit.jsonl, policy: /tmp/pgw-policy.yaml}
audit: {hmac_key_env: PGW_AUDIT_KEY}
"""


def test_the_section_with_its_defaults() -> None:
    config = parse_config(
        BASE
        + """
identity:
  oidc: {issuer: "https://login.example.com/realms/acme", client_id: pgwarden,
         client_secret_env: PGW_OIDC_SECRET}
"""
    )
    oidc = config.identity
    assert oidc is not None
    assert oidc.scopes == ("openid", "profile", "email", "groups", "offline_access")
    assert (oidc.username_claim, oidc.groups_claim) == ("preferred_username", "groups")
    assert (oidc.session_ttl, oidc.device_flow, oidc.allowed_domains) == (
        timedelta(hours=1),
        None,
        frozenset(),
    )
    assert parse_config(BASE).identity is None


@pytest.mark.parametrize(("section", "problem"), [
    ("{issuer: 'http://login.example.com', client_id: p, client_secret_env: S}", "https"),
    ("{issuer: 'https://l.example.com', client_id: p, client_secret: inline}", "not allowed"),
    ("{issuer: 'https://l.example.com', client_id: p, client_secret_env: S, scopes: [email]}",
     "openid"),
    ("{issuer: 'https://l.example.com', client_id: p, client_secret_env: S, session_ttl: 10s}",
     "at least"),
    ("{issuer: 'https://l.example.com', client_id: p, client_secret_env: S, colour: red}",
     "colour"),
])  # fmt: skip
def test_mistakes_are_refused(section: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config(BASE + f"identity:\n  oidc: {section}\n")


def test_groups_claim_none_means_groups_from_the_policy_only() -> None:
    section = "{issuer: 'https://accounts.google.com', client_id: p, client_secret_env: S, "
    config = parse_config(BASE + f"identity:\n  oidc: {section}groups_claim: none}}\n")
    assert config.identity is not None
    assert config.identity.groups_claim is None
