"""ID-token validation: every check of the contract, with PyJWT doing the JOSE part.

Two steps, because the key is looked up in between (keys.py, which may fetch): `token_header`
reads the unverified header and refuses at once an algorithm pgwarden does not accept —
`none`, any HMAC (`HS256` "signed" with the provider's *public* key is the classic forgery), or
one the provider does not list — and `verify` checks the signature with the key found, then the
claims, against the injected clock (PyJWT's own time checks are off: only `proxy/clock.py`
reads the time, so that tests can use a fake clock):

- `iss` exactly the issuer; `aud` contains the client id, and with several audiences `azp` is
  the client id (OpenID Connect Core 3.1.3.7);
- `exp`, `iat`, `sub` present; `exp` and `nbf` honoured with `LEEWAY` for clock skew, an `iat`
  from the future refused likewise;
- `nonce` equal to the flow's when the flow sent one (the code flow);
- the person: user name from `username_claim` (else `email`) and a valid pgwarden name; groups
  from `groups_claim`, which must be a list of strings (with `groups_claim: none`, no groups
  from the provider: only the YAML's); with `allowed_domains`, a verified email in one of them.

Pure apart from PyJWT; every refusal is a `SignInRefused` with its reason.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import jwt

from proxy.identity.errors import SignInRefused
from proxy.identity.settings import OidcSettings
from proxy.policy.fields import check_name
from proxy.policy.models import GroupName, UserName

LEEWAY: Final = timedelta(seconds=30)
MAX_TOKEN_LENGTH: Final = 64 * 1024  # ID tokens are a few KiB; a huge one is not parsed
MAX_GROUPS: Final = 1000  # a person in more groups than this is refused, not truncated
REQUIRED: Final = ("iss", "aud", "exp", "iat", "sub")


@dataclass(frozen=True, slots=True)
class Expected:
    """What an ID token must say to be accepted here."""

    settings: OidcSettings
    algorithms: tuple[str, ...]  # the provider's ∩ pgwarden's
    nonce: str | None = None  # the code flow's; None: the token's nonce is not checked


@dataclass(frozen=True, slots=True)
class Person:
    """Who signed in, as their provider says."""

    user: UserName
    issuer: str
    subject: str
    email: str | None
    groups: tuple[GroupName, ...]


def token_header(token: str, algorithms: tuple[str, ...]) -> tuple[str, str | None]:
    """(alg, kid) of a token whose algorithm is acceptable; SignInRefused otherwise."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        raise SignInRefused("bad_token", "the identity provider's ID token is malformed")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise SignInRefused("bad_token", "the identity provider's ID token is malformed") from exc
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in algorithms:
        raise SignInRefused("algorithm", f"ID tokens signed with {str(alg)[:20]!r} are not "
                            f"accepted (allowed: {', '.join(algorithms)})")  # fmt: skip
    if kid is not None and not isinstance(kid, str):
        raise SignInRefused("bad_token", "the ID token's key id is not text")
    return alg, kid


def verify(token: str, key: jwt.PyJWK, expected: Expected, now: datetime) -> Person:
    """The person a token speaks for, every check passed (module docstring)."""
    alg, _ = token_header(token, expected.algorithms)
    if key.algorithm_name != alg and key.algorithm_name in expected.algorithms:
        raise SignInRefused(
            "algorithm", f"the token says {alg}, its key is for {key.algorithm_name}"
        )
    claims = _decode(token, key, alg, expected.settings)
    _check_audience(claims, expected.settings.client_id)
    _check_times(claims, now)
    if expected.nonce is not None:
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce, expected.nonce):
            raise SignInRefused("nonce", "the ID token's nonce does not match this sign-in")
    return person_from_claims(claims, expected.settings)


def _decode(token: str, key: jwt.PyJWK, alg: str, settings: OidcSettings) -> dict[str, Any]:
    options: Any = {"require": list(REQUIRED), "verify_exp": False, "verify_nbf": False,
                    "verify_iat": False, "verify_aud": False, "verify_iss": False}  # fmt: skip
    try:
        claims: dict[str, Any] = jwt.decode(token, key, algorithms=[alg], options=options)
    except jwt.InvalidSignatureError as exc:
        raise SignInRefused("bad_signature", "the ID token's signature is not valid") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise SignInRefused("claims", f"the ID token lacks the {exc.claim!r} claim") from exc
    except jwt.PyJWTError as exc:
        raise SignInRefused("bad_token", f"the ID token cannot be read ({exc})") from exc
    if claims.get("iss") != settings.issuer:
        issuer = str(claims.get("iss"))[:100]
        raise SignInRefused(
            "issuer", f"the ID token was issued by {issuer!r}, not {settings.issuer!r}"
        )
    return claims


def _check_audience(claims: Mapping[str, Any], client_id: str) -> None:
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or client_id not in audiences:
        raise SignInRefused("audience", "the ID token was issued for another application")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise SignInRefused("audience", "the ID token has several audiences and was not issued "
                            "to pgwarden (azp)")  # fmt: skip


def _check_times(claims: Mapping[str, Any], now: datetime) -> None:
    exp, iat, nbf = _instant(claims, "exp"), _instant(claims, "iat"), claims.get("nbf")
    if now > exp + LEEWAY:
        raise SignInRefused("expired", f"the ID token expired at {exp.isoformat()}; sign in again")
    if iat > now + LEEWAY:
        raise SignInRefused("not_yet_valid", "the ID token was issued in the future")
    if nbf is not None and _instant(claims, "nbf") > now + LEEWAY:
        raise SignInRefused("not_yet_valid", "the ID token is not valid yet (nbf)")


def _instant(claims: Mapping[str, Any], name: str) -> datetime:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SignInRefused("claims", f"the ID token's {name!r} is not a number")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise SignInRefused("claims", f"the ID token's {name!r} is out of range") from exc


def person_from_claims(claims: Mapping[str, Any], settings: OidcSettings) -> Person:
    """The person described by verified claims (an ID token's, or userinfo's)."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise SignInRefused("claims", "the identity provider sent no subject (sub)")
    email = claims.get("email") if isinstance(claims.get("email"), str) else None
    _check_domain(claims, email, settings)
    return Person(_user_name(claims, email, settings), settings.issuer, subject, email,
                  _groups(claims, settings.groups_claim))  # fmt: skip


def _user_name(claims: Mapping[str, Any], email: str | None, settings: OidcSettings) -> UserName:
    name = claims.get(settings.username_claim)
    if not isinstance(name, str) or not name:
        name = email
    if name is None:
        raise SignInRefused("claims", f"the identity provider sent neither "
                            f"{settings.username_claim!r} nor 'email' for this person")  # fmt: skip
    if (problem := check_name(name)) is not None:
        raise SignInRefused("claims", f"the user name from the identity provider {problem}")
    return UserName(name)


def _groups(claims: Mapping[str, Any], claim: str | None) -> tuple[GroupName, ...]:
    if claim is None:  # `groups_claim: none`: the YAML gives groups, whatever the token says
        return ()
    if claim not in claims:
        raise SignInRefused(
            "groups", f"the identity provider sent no {claim!r} claim: map the person's groups "
            "into the ID token (and the userinfo answer)",
        )  # fmt: skip
    groups = claims[claim]
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise SignInRefused("groups", f"the {claim!r} claim is not a list of group names")
    if len(groups) > MAX_GROUPS:
        raise SignInRefused("groups", f"the {claim!r} claim lists over {MAX_GROUPS} groups")
    # A group pgwarden cannot name (spaces, non-ASCII) can appear in no policy: left out.
    return tuple(dict.fromkeys(GroupName(g) for g in groups if check_name(g) is None))


def _check_domain(claims: Mapping[str, Any], email: str | None, settings: OidcSettings) -> None:
    if not settings.allowed_domains:
        return
    domain = email.rpartition("@")[2].lower() if email and "@" in email else None
    if domain not in settings.allowed_domains or claims.get("email_verified") is not True:
        raise SignInRefused("domain", "this account's email is not in a domain allowed to sign "
                            "in to pgwarden (or is not verified)")  # fmt: skip
