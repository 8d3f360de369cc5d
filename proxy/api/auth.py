"""Bearer tokens: who is calling the API.

A token is `pgw_` + 32 random bytes in base64url (256 bits). `pgwarden token create USER` prints
it once; the store keeps only its SHA-256 digest, with the user it speaks for, when it was made,
last used and revoked. A leaked state file therefore leaks no usable token, and since a token is
high-entropy, a plain (unsalted, fast) hash is the right tool — there is nothing to brute-force.

Lookup is by digest (an indexed equality on a hash of the presented secret: timing can reveal
nothing about stored tokens), and the digest found is compared again with `hmac.compare_digest`.
A token authenticates its user only while the user is in the *current* policy, so removing a
person from the policy also cuts their API access. `last_used_at` is written at most once per
`TOUCH_INTERVAL`, so API traffic does not turn into a disk write per call, and not at all while
the state store cannot be written: a token still works then, so that `pgwarden sessions` and
`pgwarden kill` can end sessions when nothing else can.

A single sign-on session (`pgs_...`, proxy/identity/sessions.py) is accepted the same way and
yields the same principal: looked up by digest in `api_sessions`, refused once revoked (logout)
or past its end, and only while its person is in the effective policy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from datetime import datetime, timedelta

from proxy.api.errors import ApiError, unauthenticated
from proxy.grants.store import StateStoreUnavailable, Store
from proxy.grants.store_schema import TokenRecord
from proxy.identity.sessions import SESSION_PREFIX, session_digest
from proxy.policy.models import Policy, UserName

log = logging.getLogger(__name__)

TOKEN_PREFIX = "pgw_"  # noqa: S105 - a prefix, not a secret
TOKEN_BYTES = 32
TOKEN_ID_BYTES = 6  # the public id shown by `token list`, used by `token revoke`
# A real token is 47 characters; anything much longer is garbage and is not even hashed.
MAX_TOKEN_LENGTH = 128
TOUCH_INTERVAL = timedelta(minutes=1)
HOW_TO_GET_ONE = "create one on the server host with: pgwarden token create USER"
SIGN_IN_AGAIN = "sign in again with: pgwarden login"


def new_token(user: UserName, now: datetime) -> tuple[str, TokenRecord]:
    """A fresh secret (to show once) and the record to store for it."""
    raw = secrets.token_bytes(TOKEN_BYTES)
    secret = TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    token_id = "tok_" + secrets.token_hex(TOKEN_ID_BYTES)
    return secret, TokenRecord(token_id, user, token_digest(secret), now)


def token_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def bearer_secret(header: str | None) -> str:
    """The token in an `Authorization: Bearer ...` header; 401 if missing or malformed."""
    if not header:
        raise unauthenticated(
            f"missing bearer token: send Authorization: Bearer <token> (set PGWARDEN_TOKEN; "
            f"{HOW_TO_GET_ONE})"
        )
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise unauthenticated("the Authorization header must be: Bearer <token>")
    if len(secret) > MAX_TOKEN_LENGTH or not secret.startswith((TOKEN_PREFIX, SESSION_PREFIX)):
        raise unauthenticated(f"invalid token ({HOW_TO_GET_ONE})")
    return secret


def authenticate(store: Store, secret: str, policy: Policy, now: datetime) -> UserName:
    """The user a token (from `bearer_secret`) speaks for; raises a 401 `ApiError`.

    Blocking (SQLite): call it in an executor.
    """
    if secret.startswith(SESSION_PREFIX):
        return authenticate_session(store, secret, policy, now)
    digest = token_digest(secret)
    with store.read() as tx:
        record = tx.token_by_digest(digest)
    if record is None or not hmac.compare_digest(record.digest, digest):
        raise unauthenticated(f"unknown token ({HOW_TO_GET_ONE})")
    if record.revoked_at is not None:
        raise unauthenticated(f"this token was revoked ({HOW_TO_GET_ONE})")
    if record.user not in policy.users:
        raise unauthenticated(f"the token's user {record.user!r} is no longer in the policy")
    if record.last_used_at is None or now - record.last_used_at >= TOUCH_INTERVAL:
        try:
            with store.write() as tx:
                tx.touch_token(record.id, now)
        except StateStoreUnavailable as exc:  # a bookkeeping write: never worth refusing a call
            log.debug("token %s: last use not recorded: %s", record.id, exc)
    return record.user


def authenticate_session(store: Store, secret: str, policy: Policy, now: datetime) -> UserName:
    """The person a single sign-on session speaks for; raises a 401 `ApiError`. Blocking."""
    digest = session_digest(secret)
    with store.read() as tx:
        session = tx.api_session(digest)
    if session is None or not hmac.compare_digest(session.digest, digest):
        raise unauthenticated(f"unknown pgwarden session; {SIGN_IN_AGAIN}")
    if session.revoked_at is not None:
        ended = session.revoked_at.isoformat(timespec="seconds")
        raise unauthenticated(f"your pgwarden session was ended at {ended}; {SIGN_IN_AGAIN}")
    if now >= session.expires_at:
        ended = session.expires_at.isoformat(timespec="seconds")
        raise unauthenticated(f"your pgwarden session expired at {ended}; {SIGN_IN_AGAIN}")
    if session.user not in policy.users:
        raise PersonUnknown(f"{session.user!r} is no longer in the policy")
    return session.user


class PersonUnknown(ApiError):
    """401: a valid session whose person this server's effective policy does not hold (yet:
    they may have signed in on another replica a moment ago; `app.py` looks again once)."""

    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthenticated", message)
