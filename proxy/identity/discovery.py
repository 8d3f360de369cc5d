"""The provider's discovery document (`{issuer}/.well-known/openid-configuration`), checked.

Fetched on first need and kept for `MAX_AGE`; a failed fetch keeps the last good document in use
(the provider's endpoints rarely move, and a blip must not stop sign-ins), and with none yet it is
tried again at most once per `RETRY_AFTER`, so a down provider is not hammered by every caller.

Checks (OpenID Connect Discovery 1.0, section 4.3): the document's `issuer` is exactly the
configured one (a document served for another issuer is refused); the endpoints pgwarden uses are
present; the signing algorithms are those it lists *and* pgwarden allows (`ALLOWED_ALGORITHMS`:
asymmetric only — never `none`, never an HMAC, whose "key" would be public).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from proxy.identity.errors import IdpUnavailable

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS: Final = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
MAX_AGE: Final = 3600.0  # seconds a good document is used before it is read again
RETRY_AFTER: Final = 5.0  # seconds between tries while there is no good document
HTTP_TIMEOUT: Final = aiohttp.ClientTimeout(total=10)
MAX_DOCUMENT_BYTES: Final = 256 * 1024  # discovery documents and JWKS are a few KiB


@dataclass(frozen=True, slots=True)
class Provider:
    """What pgwarden uses of a provider's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]
    device_authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    introspection_endpoint: str | None = None  # RFC 7662: removal.py asks it about a refusal


async def get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """A JSON object from `url`; IdpUnavailable if it cannot be had."""
    try:
        async with http.get(url, timeout=HTTP_TIMEOUT) as response:
            if response.status != 200:
                raise IdpUnavailable(f"the identity provider answered {response.status} at {url}")
            raw = await response.content.read(MAX_DOCUMENT_BYTES + 1)
            if len(raw) > MAX_DOCUMENT_BYTES:
                raise IdpUnavailable(f"the identity provider's document at {url} is too large")
            document = response_json(raw, url)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise IdpUnavailable(f"cannot reach the identity provider at {url} ({exc})") from exc
    return document


def response_json(raw: bytes, url: str) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise IdpUnavailable(f"the identity provider's answer at {url} is not JSON") from exc
    if not isinstance(document, dict):
        raise IdpUnavailable(f"the identity provider's answer at {url} is not a JSON object")
    return document


def parse_provider(document: dict[str, Any], issuer: str) -> Provider:
    """The checked document; IdpUnavailable naming what is wrong."""
    if document.get("issuer") != issuer:
        raise IdpUnavailable(
            f"the discovery document names issuer {str(document.get('issuer'))[:100]!r}, not the "
            f"configured {issuer!r}; set identity.oidc.issuer to the provider's exact issuer"
        )
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")
               if not isinstance(document.get(k), str)]  # fmt: skip
    if missing:
        raise IdpUnavailable(f"the discovery document lacks {', '.join(missing)}")
    listed = document.get("id_token_signing_alg_values_supported") or ["RS256"]
    algorithms = tuple(a for a in ALLOWED_ALGORITHMS if a in listed)
    if not algorithms:
        raise IdpUnavailable(
            f"the provider signs ID tokens only with {listed!r}; pgwarden accepts "
            f"{', '.join(ALLOWED_ALGORITHMS)}"
        )
    return Provider(
        issuer, document["authorization_endpoint"], document["token_endpoint"],
        document["jwks_uri"], algorithms, _optional(document, "device_authorization_endpoint"),
        _optional(document, "revocation_endpoint"), _optional(document, "userinfo_endpoint"),
        _optional(document, "introspection_endpoint"),
    )  # fmt: skip


def _optional(document: dict[str, Any], key: str) -> str | None:
    value = document.get(key)
    return value if isinstance(value, str) else None


class Discovery:
    """The provider's document, cached (see the module docstring)."""

    def __init__(
        self, http: aiohttp.ClientSession, issuer: str, monotonic: Callable[[], float]
    ) -> None:
        self._http, self._issuer, self._monotonic = http, issuer, monotonic
        self._provider: Provider | None = None
        self._fetched_at = 0.0
        self._failed_at: float | None = None
        self._lock = asyncio.Lock()

    @property
    def url(self) -> str:
        return self._issuer.rstrip("/") + "/.well-known/openid-configuration"

    async def provider(self) -> Provider:
        if self._fresh():
            assert self._provider is not None
            return self._provider
        async with self._lock:  # one fetch at a time: the others wait for its outcome
            if not self._fresh():
                await self._fetch()
        if self._provider is None:
            raise IdpUnavailable("the identity provider is unavailable; try again shortly")
        return self._provider

    def _fresh(self) -> bool:
        now = self._monotonic()
        if self._provider is not None:
            return now - self._fetched_at < MAX_AGE or self._recently_failed(now)
        return self._recently_failed(now)

    def _recently_failed(self, now: float) -> bool:
        return self._failed_at is not None and now - self._failed_at < RETRY_AFTER

    async def _fetch(self) -> None:
        try:
            self._provider = parse_provider(await get_json(self._http, self.url), self._issuer)
        except IdpUnavailable as exc:
            self._failed_at = self._monotonic()
            log.warning("identity provider discovery failed: %s", exc.message)
            if self._provider is None:
                raise
            return
        self._fetched_at, self._failed_at = self._monotonic(), None
