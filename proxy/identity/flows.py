"""Talking to the identity provider: the device flow (RFC 8628), the code flow with PKCE
(RFC 7636), refresh, revocation, userinfo, and ID tokens checked with its keys.

pgwarden is a confidential client: the server holds the client secret and sends it with
`client_secret_basic` (RFC 6749 2.3.1: id and secret form-encoded, then Basic); the CLI never
talks to the token endpoint. Every request has a timeout; a provider that cannot be reached, or
answers what is not JSON, is `IdpUnavailable` (503: nobody's fault), while a provider that says
no (`invalid_grant`, `access_denied`, ...) is the caller's `SignInRefused` (401).

A flow's own secrets — `state`, `nonce`, the PKCE verifier, the device code — are made here and
kept in the state store (`sign_in_flows`, by the digest of a random flow id the caller holds), so
any replica can finish a flow another started.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, urlencode

import aiohttp

from proxy.grants.store_identity import SignInFlow
from proxy.identity.discovery import (
    HTTP_TIMEOUT,
    MAX_DOCUMENT_BYTES,
    Discovery,
    Provider,
    get_json,
    response_json,
)
from proxy.identity.errors import IdpUnavailable, SignInRefused
from proxy.identity.keys import KeyCache
from proxy.identity.settings import OidcSettings
from proxy.identity.tokens import Expected, Person, person_from_claims, token_header, verify
from proxy.policy.models import SecretUnavailable

DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
BROWSER_FLOW_TTL: Final = timedelta(minutes=10)  # from the authorization URL to the callback
MAX_DEVICE_FLOW_TTL: Final = timedelta(minutes=30)
PENDING: Final = frozenset({"authorization_pending", "slow_down"})


def flow_digest(flow_id: str) -> bytes:
    return hashlib.sha256(flow_id.encode("utf-8")).digest()


def new_flow_id() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    """A token endpoint's answer: HTTP status and its JSON object."""

    status: int
    body: dict[str, Any]

    @property
    def error(self) -> str | None:
        error = self.body.get("error")
        return error if isinstance(error, str) else None


class IdpClient:
    """The provider, as pgwarden's confidential client sees it."""

    def __init__(
        self, settings: OidcSettings, http: aiohttp.ClientSession,
        monotonic: Callable[[], float],
    ) -> None:  # fmt: skip
        self.settings, self._http = settings, http
        self.discovery = Discovery(http, settings.issuer, monotonic)
        self.keys = KeyCache(self._jwks, monotonic)

    async def provider(self) -> Provider:
        return await self.discovery.provider()

    async def _jwks(self) -> dict[str, Any]:
        return await get_json(self._http, (await self.provider()).jwks_uri)

    async def device_flow(self, now: datetime) -> tuple[str, SignInFlow, dict[str, Any]]:
        """(flow id, flow to store, what the person is told) of a new device flow."""
        provider = await self.provider()
        if not self.device_flow_on(provider):
            raise SignInRefused("flow", "this pgwarden offers no device sign-in; use: pgwarden "
                                "login --browser")  # fmt: skip
        assert provider.device_authorization_endpoint is not None
        form = {"scope": " ".join(self.settings.scopes)}
        answer = await self.post(provider.device_authorization_endpoint, form)
        body = answer.body
        if answer.status != 200 or not isinstance(body.get("device_code"), str):
            raise IdpUnavailable(f"the identity provider refused a device sign-in "
                                 f"({answer.error or answer.status})")  # fmt: skip
        expires_in = _seconds(body.get("expires_in"), 600)
        ttl = min(timedelta(seconds=expires_in), MAX_DEVICE_FLOW_TTL)
        flow_id = new_flow_id()
        flow = SignInFlow(flow_digest(flow_id), "device", now, now + ttl,
                          device_code=body["device_code"])  # fmt: skip
        shown = {
            "user_code": body.get("user_code"), "verification_uri": body.get("verification_uri"),
            "verification_uri_complete": body.get("verification_uri_complete"),
            "interval": _seconds(body.get("interval"), 5), "expires_in": int(ttl.total_seconds()),
        }  # fmt: skip
        return flow_id, flow, shown

    def device_flow_on(self, provider: Provider) -> bool:
        offered = provider.device_authorization_endpoint is not None
        return offered and self.settings.device_flow is not False

    async def poll_device(self, flow: SignInFlow) -> TokenAnswer:
        provider = await self.provider()
        form = {"grant_type": DEVICE_GRANT, "device_code": flow.device_code or ""}
        return await self.post(provider.token_endpoint, form)

    async def browser_flow(self, redirect_uri: str, now: datetime) -> tuple[str, SignInFlow, str]:
        """(flow id, flow to store, authorization URL) of a new code flow with PKCE."""
        provider = await self.provider()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)  # 64 characters: RFC 7636 wants 43 to 128
        challenge = hashlib.sha256(verifier.encode("ascii")).digest()
        params = {
            "client_id": self.settings.client_id, "response_type": "code",
            "redirect_uri": redirect_uri, "scope": " ".join(self.settings.scopes),
            "state": state, "nonce": nonce, "code_challenge_method": "S256",
            "code_challenge": base64.urlsafe_b64encode(challenge).rstrip(b"=").decode("ascii"),
        }  # fmt: skip
        if "offline_access" in self.settings.scopes:
            params["prompt"] = "consent"  # OpenID Connect Core 11: offline_access needs consent
        flow_id = new_flow_id()
        flow = SignInFlow(flow_digest(flow_id), "browser", now, now + BROWSER_FLOW_TTL,
                          state=state, nonce=nonce, verifier=verifier,
                          redirect_uri=redirect_uri)  # fmt: skip
        return flow_id, flow, f"{provider.authorization_endpoint}?{urlencode(params)}"

    async def exchange_code(self, flow: SignInFlow, code: str) -> TokenAnswer:
        provider = await self.provider()
        form = {
            "grant_type": "authorization_code", "code": code,
            "code_verifier": flow.verifier or "", "redirect_uri": flow.redirect_uri or "",
        }  # fmt: skip
        return await self.post(provider.token_endpoint, form)

    async def refresh(self, refresh_token: str) -> TokenAnswer:
        provider = await self.provider()
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self.post(provider.token_endpoint, form)

    async def revoke(self, refresh_token: str) -> bool:
        """Revoke a refresh token where the provider can; False if it has no endpoint."""
        provider = await self.provider()
        if provider.revocation_endpoint is None:
            return False
        form = {"token": refresh_token, "token_type_hint": "refresh_token"}
        return (await self.post(provider.revocation_endpoint, form)).status == 200

    async def introspect(self, refresh_token: str) -> dict[str, Any] | None:
        """The provider's introspection answer for a refresh token (RFC 7662), or None when it
        has no endpoint or does not answer 200."""
        provider = await self.provider()
        if provider.introspection_endpoint is None:
            return None
        form = {"token": refresh_token, "token_type_hint": "refresh_token"}
        answer = await self.post(provider.introspection_endpoint, form)
        return answer.body if answer.status == 200 else None

    async def userinfo(self, access_token: str) -> Person:
        provider = await self.provider()
        if provider.userinfo_endpoint is None:
            raise SignInRefused("claims", "the identity provider sent no ID token on refresh and "
                                "has no userinfo endpoint")  # fmt: skip
        headers = {"Authorization": f"Bearer {access_token}"}
        try:
            async with self._http.get(provider.userinfo_endpoint, headers=headers,
                                      timeout=HTTP_TIMEOUT) as response:  # fmt: skip
                raw = await response.content.read(MAX_DOCUMENT_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise IdpUnavailable(f"cannot reach the identity provider ({exc})") from exc
        if status != 200:
            raise SignInRefused("denied", f"the identity provider refused userinfo ({status})")
        return person_from_claims(response_json(raw, provider.userinfo_endpoint), self.settings)

    async def person(self, id_token: object, nonce: str | None, now: datetime) -> Person:
        """The person an ID token from the token endpoint speaks for, every check passed."""
        provider = await self.provider()
        if not isinstance(id_token, str):
            raise SignInRefused("bad_token", "the identity provider sent no ID token")
        _, kid = token_header(id_token, provider.algorithms)
        key = await self.keys.key(kid)
        return verify(id_token, key, Expected(self.settings, provider.algorithms, nonce), now)

    async def post(self, url: str, form: dict[str, str]) -> TokenAnswer:
        """POST a form as the confidential client; any JSON answer, whatever its status."""
        pair = f"{quote(self.settings.client_id, safe='')}:{quote(self._secret(), safe='')}"
        headers = {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode(),
                   "Accept": "application/json"}  # fmt: skip
        try:
            async with self._http.post(url, data=form, headers=headers,
                                       timeout=HTTP_TIMEOUT) as response:  # fmt: skip
                raw = await response.content.read(MAX_DOCUMENT_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise IdpUnavailable(f"cannot reach the identity provider ({exc})") from exc
        if status >= 500:
            raise IdpUnavailable(f"the identity provider failed ({status})")
        return TokenAnswer(status, response_json(raw, url) if raw else {})

    def _secret(self) -> str:
        try:
            return self.settings.client_secret.read()
        except SecretUnavailable as exc:
            raise IdpUnavailable(f"pgwarden's OpenID client secret: {exc}") from exc


def _seconds(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 86400:
        return value
    return default
