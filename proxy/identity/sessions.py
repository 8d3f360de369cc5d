"""pgwarden API sessions: what a sign-in yields, a bearer token like an API token, but short-lived.

A session token is `pgs_` + 32 random bytes in base64url. The store keeps only its SHA-256
digest (as for API tokens: a high-entropy secret needs no salt or slow hash), with the person and
the groups read at sign-in, when it was issued and ends, and whether it was revoked (logout).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Final

from proxy.grants.store_identity import ApiSession
from proxy.identity.tokens import Person

SESSION_PREFIX: Final = "pgs_"
SESSION_BYTES: Final = 32


def session_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def new_session(person: Person, now: datetime, ttl: timedelta) -> tuple[str, ApiSession]:
    """A fresh session token (to give once) and the record to store for it."""
    raw = secrets.token_bytes(SESSION_BYTES)
    secret = SESSION_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    record = ApiSession(session_digest(secret), person.user, person.groups, person.issuer,
                        person.subject, now, now + ttl)  # fmt: skip
    return secret, record
