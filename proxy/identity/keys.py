"""The provider's signing keys (its JWKS), cached, refetched on an unknown key id — sparingly.

Keys are fetched on first need and kept until a refetch says otherwise. A token whose `kid` is
not among them triggers one refetch (the provider may have rotated its keys), but at most one
per `MIN_REFETCH` seconds whatever arrives: a burst of tokens with made-up key ids costs the
provider one request, not one each (no refresh storm, SECURITY.md row 46). Concurrent callers
wait for the one fetch in progress instead of starting their own.

Keys that PyJWT cannot use (an encryption key, an unknown type) and symmetric keys are skipped,
not fatal: a JWKS may hold keys for other purposes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import jwt

from proxy.identity.errors import IdpUnavailable, SignInRefused

log = logging.getLogger(__name__)

MIN_REFETCH: Final = 60.0  # seconds between two fetches caused by unknown key ids
RETRY_AFTER: Final = 5.0  # seconds after a failed fetch before the next try
# Key types an ID token may be verified with: a symmetric (`oct`) key in a JWKS is public, so a
# token "signed" with it proves nothing (RFC 7517 allows publishing one; pgwarden ignores it).
ASYMMETRIC: Final = frozenset({"RSA", "EC", "OKP"})


def parse_jwks(document: dict[str, Any]) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document, by key id."""
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise IdpUnavailable("the identity provider's JWKS has no `keys` list")
    found: dict[str, jwt.PyJWK] = {}
    for entry in keys:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in ASYMMETRIC:  # a published secret can verify nothing
            log.info("JWKS: key %r skipped: not an asymmetric key", entry.get("kid"))
            continue
        kid = entry.get("kid")
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.info("JWKS: key %r skipped: %s", kid, exc)
            continue
        found[kid if isinstance(kid, str) else ""] = key
    return found


class KeyCache:
    """Signing keys by id; `fetch` reads the JWKS document (an HTTP GET of its URI)."""

    def __init__(
        self, fetch: Callable[[], Awaitable[dict[str, Any]]], monotonic: Callable[[], float]
    ) -> None:
        self._fetch, self._monotonic = fetch, monotonic
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0  # how many times the JWKS was read (tests, and the log)

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key `kid` names (None: the only key, when there is exactly one)."""
        if (found := self._lookup(kid)) is not None:
            return found
        async with self._lock:
            if (found := self._lookup(kid)) is None and self._may_fetch():
                await self._refetch()
                found = self._lookup(kid)
        if found is None and not self._keys and self._failed_at is not None:
            raise IdpUnavailable("the identity provider's keys cannot be read; try again shortly")
        if found is None:
            raise SignInRefused(
                "unknown_key", "the token is signed with a key the identity provider does not "
                "publish; sign in again",
            )  # fmt: skip
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _may_fetch(self) -> bool:
        now = self._monotonic()
        if self._failed_at is not None and now - self._failed_at < RETRY_AFTER:
            return False
        return self._fetched_at is None or now - self._fetched_at >= MIN_REFETCH

    async def _refetch(self) -> None:
        self.fetches += 1
        try:
            keys = parse_jwks(await self._fetch())
        except IdpUnavailable:
            self._failed_at = self._monotonic()  # a down provider is not asked at every call
            raise
        self._keys, self._fetched_at, self._failed_at = keys, self._monotonic(), None
        log.info("identity provider keys read: %s", ", ".join(sorted(self._keys)) or "none")
