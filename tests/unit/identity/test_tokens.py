"""ID-token validation (proxy/identity/tokens.py) against a local key set: every check of the
contract, with tokens forged the ways attackers forge them (PyJWT signs them here)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.identity.errors import IdpUnavailable, SignInRefused
from proxy.identity.keys import MIN_REFETCH, KeyCache, parse_jwks
from proxy.identity.settings import OidcSettings
from proxy.identity.tokens import Expected, token_header, verify
from proxy.policy.models import SecretRef

ISSUER = "https://login.example.test"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = OidcSettings(ISSUER, "pgwarden", SecretRef(env="UNUSED"))
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


KEYS = parse_jwks({"keys": [public_jwk(RSA_KEY, "key-1")]})


def claims(**changes: Any) -> dict[str, Any]:
    base = {
        "iss": ISSUER, "aud": "pgwarden", "sub": "3f1c-alice", "iat": int(NOW.timestamp()),
        "exp": int((NOW + timedelta(minutes=5)).timestamp()), "preferred_username": "alice",
        "email": "alice@example.test", "email_verified": True, "groups": ["engineers"],
        "nonce": "n-1",
    }  # fmt: skip
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed(body: dict[str, Any], key: Any = RSA_KEY, alg: str = "RS256", kid: str = "key-1") -> str:
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def check(token: str, *, settings: OidcSettings = SETTINGS, nonce: str | None = "n-1",
          now: datetime = NOW) -> Any:  # fmt: skip
    _, kid = token_header(token, ("RS256",))
    return verify(token, KEYS[kid or "key-1"], Expected(settings, ("RS256",), nonce), now)


def refused(token: str, reason: str, **kwargs: Any) -> str:
    with pytest.raises(SignInRefused) as caught:
        check(token, **kwargs)
    assert caught.value.reason == reason, caught.value.message
    return caught.value.message


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_good_token_gives_the_person_with_the_providers_groups() -> None:
    person = check(signed(claims(groups=["engineers", "oncall", "Domain Users"])))
    assert (person.user, person.subject, person.issuer) == ("alice", "3f1c-alice", ISSUER)
    assert person.groups == ("engineers", "oncall")  # a name pgwarden cannot use is left out
    assert person.email == "alice@example.test"


def test_the_email_names_the_person_when_the_username_claim_is_absent() -> None:
    assert check(signed(claims(preferred_username=None))).user == "alice@example.test"


def test_wrong_issuer_is_refused() -> None:
    assert "https://evil.test" in refused(signed(claims(iss="https://evil.test")), "issuer")


def test_another_audience_is_refused() -> None:
    refused(signed(claims(aud="other-app")), "audience")
    refused(signed(claims(aud=["other-app", "pgwarden"])), "audience")  # several, no azp
    assert check(signed(claims(aud=["other-app", "pgwarden"], azp="pgwarden"))).user == "alice"


def test_an_expired_token_is_refused_after_the_leeway() -> None:
    token = signed(claims())
    assert check(token, now=NOW + timedelta(minutes=5, seconds=29)).user == "alice"
    assert "expired" in refused(token, "expired", now=NOW + timedelta(minutes=5, seconds=31))


def test_a_token_not_yet_valid_is_refused() -> None:
    later = int((NOW + timedelta(minutes=2)).timestamp())
    refused(signed(claims(nbf=later)), "not_yet_valid")
    refused(signed(claims(iat=later)), "not_yet_valid")


def test_a_bad_signature_is_refused() -> None:
    refused(signed(claims(), key=OTHER_KEY), "bad_signature")
    head, _, sig = signed(claims()).split(".")
    tampered = b64(json.dumps(claims(preferred_username="carol")).encode())
    refused(f"{head}.{tampered}.{sig}", "bad_signature")


def test_alg_none_is_refused_before_any_key_is_looked_up() -> None:
    head = b64(json.dumps({"alg": "none", "kid": "key-1"}).encode())
    token = f"{head}.{b64(json.dumps(claims()).encode())}."
    with pytest.raises(SignInRefused) as caught:
        token_header(token, ("RS256",))
    assert caught.value.reason == "algorithm"


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64(json.dumps({"alg": "HS256", "kid": "key-1", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims()).encode())
    sig = b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    with pytest.raises(SignInRefused) as caught:
        token_header(f"{head}.{body}.{sig}", ("RS256",))
    assert caught.value.reason == "algorithm"


def test_a_wrong_or_missing_nonce_is_refused() -> None:
    refused(signed(claims(nonce="n-other")), "nonce")
    refused(signed(claims(nonce=None)), "nonce")
    assert check(signed(claims(nonce=None)), nonce=None).user == "alice"  # device flow: none sent


def test_required_claims_must_be_there() -> None:
    for claim in ("sub", "exp", "iat"):
        refused(signed(claims(**{claim: None})), "claims")


def test_a_groups_claim_missing_or_not_a_list_of_strings_is_refused() -> None:
    refused(signed(claims(groups=None)), "groups")
    refused(signed(claims(groups="engineers")), "groups")
    refused(signed(claims(groups=["engineers", 7])), "groups")


def test_with_groups_claim_none_a_token_without_groups_is_accepted() -> None:
    google = OidcSettings(ISSUER, "pgwarden", SecretRef(env="UNUSED"), groups_claim=None)
    body = claims()
    del body["groups"]
    assert check(signed(body), settings=google).groups == ()
    assert check(signed(claims()), settings=google).groups == ()  # the YAML's alone count


def test_allowed_domains_need_a_verified_email_there() -> None:
    corp = OidcSettings(ISSUER, "pgwarden", SecretRef(env="UNUSED"),
                        allowed_domains=frozenset({"example.test"}))  # fmt: skip
    assert check(signed(claims()), settings=corp).user == "alice"
    refused(signed(claims(email="alice@elsewhere.test")), "domain", settings=corp)
    refused(signed(claims(email_verified=False)), "domain", settings=corp)


def test_a_user_name_pgwarden_cannot_use_is_refused() -> None:
    refused(signed(claims(preferred_username="alice smith")), "claims")


def test_a_key_for_another_algorithm_is_not_used() -> None:
    token = signed(claims(), alg="RS384")
    with pytest.raises(SignInRefused) as caught:
        verify(token, KEYS["key-1"], Expected(SETTINGS, ("RS256", "RS384"), "n-1"), NOW)
    assert caught.value.reason == "algorithm"


class Jwks:
    """The provider's JWKS endpoint as KeyCache sees it; counts reads."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys, self.reads, self.down = list(keys), 0, False

    async def __call__(self) -> dict[str, Any]:
        self.reads += 1
        await asyncio.sleep(0)  # a real fetch yields: let the burst pile up behind it
        if self.down:
            raise IdpUnavailable("down")
        return {"keys": self.keys}


def test_a_burst_of_unknown_key_ids_costs_one_refetch() -> None:
    clock = [1000.0]
    jwks = Jwks(public_jwk(RSA_KEY, "key-1"))
    cache = KeyCache(jwks, lambda: clock[0])

    async def burst() -> list[BaseException | Any]:
        await cache.key("key-1")
        clock[0] += MIN_REFETCH  # a refetch is allowed again
        lookups = [cache.key(f"forged-{i}") for i in range(50)]
        return await asyncio.gather(*lookups, return_exceptions=True)

    outcomes = asyncio.run(burst())
    assert all(isinstance(o, SignInRefused) and o.reason == "unknown_key" for o in outcomes)
    assert jwks.reads == 2  # the first read, and one refetch for all fifty


def test_a_rotated_key_is_found_by_one_refetch_once_allowed() -> None:
    clock = [1000.0]
    jwks = Jwks(public_jwk(RSA_KEY, "key-1"))
    cache = KeyCache(jwks, lambda: clock[0])
    asyncio.run(cache.key("key-1"))
    jwks.keys.append(public_jwk(OTHER_KEY, "key-2"))
    clock[0] += 1
    with pytest.raises(SignInRefused):  # within MIN_REFETCH of the last read: no refetch
        asyncio.run(cache.key("key-2"))
    clock[0] += MIN_REFETCH
    assert asyncio.run(cache.key("key-2")).key_id == "key-2"
    assert jwks.reads == 2
    assert asyncio.run(cache.key("key-1")).key_id == "key-1"  # kept: the refetch still lists it


def test_a_provider_down_is_not_asked_at_every_call() -> None:
    clock = [1000.0]
    jwks = Jwks(public_jwk(RSA_KEY, "key-1"))
    jwks.down = True
    cache = KeyCache(jwks, lambda: clock[0])
    with pytest.raises(IdpUnavailable):
        asyncio.run(cache.key("key-1"))
    with pytest.raises(IdpUnavailable):
        asyncio.run(cache.key("key-1"))
    assert jwks.reads == 1
    jwks.down, clock[0] = False, clock[0] + 5
    assert asyncio.run(cache.key("key-1")).key_id == "key-1"


def test_a_symmetric_key_published_in_the_jwks_is_never_used() -> None:
    """A JWKS is public: an `oct` key in it is a secret everybody knows, and verifies nothing."""
    secret = {
        "kty": "oct",
        "kid": "shared",
        "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0",
        "alg": "HS256",
    }
    keys = parse_jwks({"keys": [secret, public_jwk(RSA_KEY, "key-1")]})
    assert sorted(keys) == ["key-1"]
