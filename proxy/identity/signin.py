"""One sign-in from start to end: a flow with the provider, then a pgwarden session.

`SignInService` is what the API's `/v1/auth` routes call (proxy/api/auth_routes.py). Each sign-in
ends the same way (`_signed_in`): the provider's ID token is verified (tokens.py), the person is
written to `people` — refused if their user name already belongs to another subject: a name maps
to one subject — and a session is stored, in one write transaction; then the effective policy is
refreshed here at once (other replicas follow the change counter within a second).

Every refusal (`SignInRefused`, 401) and every provider failure (`IdpUnavailable`, 503) is
logged at WARNING with its reason and counted in `pgwarden_sign_in_failures_total{reason}`, and
creates nothing: the person and the session are written only after every check passed, and a
flow is marked used before the provider is asked to redeem it, so it completes at most once.

Each session keeps the digest of the refresh token it was given with; a refresh with that token
ends it as it makes the next one (one live session per sign-in). Sign-ins, sign-outs and
removals are recorded in the audit log ahead of their commit, refusals after (record.py). A
refresh the provider refuses because the account is gone (removal.py) marks the person removed
and ends their sessions, then their grants (`on_removed`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, ParamSpec, TypeVar

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from proxy.clock import Clock
from proxy.grants.store import Store, StoreTx
from proxy.grants.store_identity import ApiSession, PersonRecord, SignInFlow
from proxy.identity.errors import REASONS, IdpUnavailable, SignInBusy, SignInRefused
from proxy.identity.flows import PENDING, IdpClient, TokenAnswer, flow_digest
from proxy.identity.people import EffectivePolicy
from proxy.identity.record import (
    Fact,
    RefusedFact,
    RemovedFact,
    SignedInFact,
    SignedOutFact,
    SignInAudit,
)
from proxy.identity.removal import named_gone, vouched_subject
from proxy.identity.sessions import new_session
from proxy.identity.settings import OidcSettings
from proxy.identity.tokens import Person
from proxy.policy.models import Policy, UserName

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

AGAIN: Final = "sign in again with: pgwarden login"
STORE_THREADS: Final = 2
# Sign-ins begun and not finished, at most (every replica together): a flow row is written by an
# unauthenticated call, so a stranger must not be able to fill the store with them.
MAX_PENDING_FLOWS: Final = 1000


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A new session: its token (given once), its record, the provider's refresh token."""

    token: str
    session: ApiSession
    refresh_token: str | None

    def answer(self) -> dict[str, Any]:
        return {
            "session_token": self.token,
            "expires_at": self.session.expires_at.isoformat(),
            "user": self.session.user,
            "groups": list(self.session.groups),
            "refresh_token": self.refresh_token,
        }


class SignInService:
    """Sign-ins against the configured provider (module docstring)."""

    def __init__(
        self,
        settings: OidcSettings,
        store: Store,
        clock: Clock,
        people: EffectivePolicy,
        registry: CollectorRegistry | None = None,
        *,
        audit: SignInAudit | None = None,
        on_removed: Callable[[UserName], object] | None = None,
    ) -> None:
        self.settings, self.store, self.clock, self.people = settings, store, clock, people
        self.audit = audit  # sign-ins, sign-outs, refusals, removals (record.py)
        # Ends a removed person's grants (blocking: the runtime's GrantService, removal.py).
        self.on_removed = on_removed
        self.failures = Counter(
            "pgwarden_sign_in_failures",
            "Single sign-ins refused, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in sorted(REASONS):
            self.failures.labels(reason)  # every series exists from the start, at 0
        self._idp: IdpClient | None = None
        self._http: aiohttp.ClientSession | None = None
        self._executor = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="pgw-signin")

    @property
    def idp(self) -> IdpClient:
        """The provider's client; made on first use, on the running loop (aiohttp's rule)."""
        if self._idp is None:
            self._http = aiohttp.ClientSession()
            self._idp = IdpClient(self.settings, self._http, self.clock.monotonic)
        return self._idp

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    @asynccontextmanager
    async def refusals(self, what: str) -> AsyncIterator[None]:
        """Log and count every refusal and provider failure of `what` (a sign-in step)."""
        try:
            yield
        except (SignInRefused, IdpUnavailable) as exc:
            log.warning("sign-in refused (%s, %s): %s", what, exc.reason, exc.message)
            self.failures.labels(exc.reason).inc()
            if self.audit is not None:
                user = exc.user if isinstance(exc, SignInRefused) else ""
                fact = RefusedFact(what, exc.reason, self.settings.issuer, user, exc.message)
                await self._blocking(self.audit.refused, fact)
            raise

    # --- the routes' work ----------------------------------------------------------------

    async def describe(self) -> dict[str, Any]:
        try:
            device = self.idp.device_flow_on(await self.idp.provider())
        except IdpUnavailable:
            device = self.settings.device_flow is not False  # what it will be, once it answers
        return {"issuer": self.settings.issuer, "device_flow": device, "browser_flow": True}

    async def start_device(self) -> dict[str, Any]:
        async with self.refusals("device"):
            flow_id, flow, shown = await self.idp.device_flow(self.clock.now())
            await self._blocking(self._insert_flow, flow)
        return {"flow_id": flow_id, **shown}

    async def poll_device(self, flow_id: str) -> SignedIn | int:
        """A session once the person approved; else the seconds to wait before polling again."""
        async with self.refusals("device"):
            flow = await self._flow(flow_id, "device")
            answer = await self.idp.poll_device(flow)
            if answer.error in PENDING:
                return 10 if answer.error == "slow_down" else 5
            await self._use(flow)
            return await self._signed_in(answer, nonce=None, method="device")

    async def start_browser(self, redirect_uri: str) -> dict[str, Any]:
        async with self.refusals("browser"):
            flow_id, flow, url = await self.idp.browser_flow(redirect_uri, self.clock.now())
            await self._blocking(self._insert_flow, flow)
        return {"flow_id": flow_id, "authorization_url": url}

    async def finish_browser(
        self, flow_id: str, code: str, state: str, iss: str | None
    ) -> SignedIn:
        async with self.refusals("browser"):
            flow = await self._flow(flow_id, "browser")
            await self._use(flow)  # first: a wrong state burns the flow, so it cannot be guessed
            if not hmac.compare_digest((flow.state or "").encode(), state.encode()):
                raise SignInRefused("state", f"the sign-in's state does not match; {AGAIN}")
            if iss is not None and iss != self.settings.issuer:  # RFC 9207: mix-up attacks
                raise SignInRefused("issuer", f"the sign-in came back from another issuer; {AGAIN}")
            answer = await self.idp.exchange_code(flow, code)
            return await self._signed_in(answer, nonce=flow.nonce, method="browser")

    async def refresh(self, refresh_token: str) -> SignedIn:
        async with self.refusals("refresh"):
            answer = await self.idp.refresh(refresh_token)
            if answer.status != 200:
                await self._maybe_removed(answer, refresh_token)
                raise SignInRefused(
                    "denied",
                    f"the identity provider no longer accepts this "
                    f"sign-in ({answer.error or answer.status}); {AGAIN}",
                )
            return await self._signed_in(answer, nonce=None, refresh_token=refresh_token)

    async def logout(self, digest: bytes, refresh_token: str | None) -> bool:
        """End the session (expired or not: its refresh token is still worth revoking); False
        if no such session is stored."""
        now = self.clock.now()
        if not await self._blocking(self._sign_out, digest, now, refresh_token is not None):
            return False
        if refresh_token:
            try:
                await self.idp.revoke(refresh_token)
            except IdpUnavailable as exc:  # best effort: the session is revoked in any case
                log.warning("sign-out: the refresh token was not revoked: %s", exc.message)
        return True

    # --- the steps -----------------------------------------------------------------------

    async def _signed_in(
        self, answer: TokenAnswer, *, nonce: str | None, refresh_token: str | None = None,
        method: str = "refresh",
    ) -> SignedIn:  # fmt: skip
        if answer.status != 200:
            raise SignInRefused(
                "denied",
                f"the identity provider refused the sign-in "
                f"({answer.error or answer.status}); {AGAIN}",
            )
        now = self.clock.now()
        body = answer.body
        if "id_token" in body or refresh_token is None:
            person = await self.idp.person(body.get("id_token"), nonce, now)
        else:  # a refresh without a new ID token: the groups from userinfo
            person = await self.idp.userinfo(str(body.get("access_token", "")))
        rotated = body.get("refresh_token")
        kept = rotated if isinstance(rotated, str) else refresh_token
        token, session = new_session(person, now, self.settings.session_ttl)
        session = replace(session, refresh_digest=None if kept is None else digest_of(kept))
        replaces = None if refresh_token is None else digest_of(refresh_token)
        await self._blocking(self._record, person, session, now, method, replaces)
        await self._blocking(self.people.refresh)
        log.info("%s signed in (groups: %s)", person.user, ", ".join(person.groups) or "none")
        return SignedIn(token, session, kept)

    async def _maybe_removed(self, answer: TokenAnswer, refresh_token: str) -> None:
        """If the provider's refusal says definitively that the account is gone (removal.py),
        record the removal and end what the person holds; then refuse, saying so."""
        evidence, subject = named_gone(answer), None
        chain = await self._blocking(self._chain, digest_of(refresh_token))
        if evidence is None and answer.error == "invalid_grant":
            try:
                subject = vouched_subject(answer, await self.idp.introspect(refresh_token))
            except IdpUnavailable as exc:  # not definitive: an ordinary refusal
                log.info("refresh refused; introspection unavailable: %s", exc.message)
            evidence = None if subject is None else "refused a refresh token it says is active"
        subject = subject or (chain.subject if chain is not None else None)
        if evidence is None or subject is None:
            return
        removed = await self._blocking(self._remove, subject, evidence, self.clock.now())
        if removed is None:
            return
        if self.on_removed is not None:
            await self._blocking(self.on_removed, removed)
        await self._blocking(self.people.refresh)
        raise SignInRefused(
            "removed",
            "the identity provider says this account no longer exists or is disabled; "
            "its pgwarden sessions and grants have ended",
            user=removed,
        )

    async def _flow(self, flow_id: str, kind: str) -> SignInFlow:
        flow = await self._blocking(self._read_flow, flow_id)
        if flow is None or flow.kind != kind:
            raise SignInRefused("flow", f"no such sign-in in progress; {AGAIN}")
        if flow.used_at is not None:
            raise SignInRefused("flow", f"this sign-in was already completed; {AGAIN}")
        if self.clock.now() >= flow.expires_at:
            raise SignInRefused("flow", f"this sign-in expired; {AGAIN}")
        return flow

    async def _use(self, flow: SignInFlow) -> None:
        if not await self._blocking(self._mark_used, flow.digest):
            raise SignInRefused("flow", f"this sign-in was already completed; {AGAIN}")

    # --- the store (blocking) ------------------------------------------------------------

    def _changed(self, change: Callable[[StoreTx], Fact | None]) -> Fact | None:
        return audited_change(self.store, self.audit, change)

    def _insert_flow(self, flow: SignInFlow) -> None:
        with self.store.write() as tx:
            tx.prune_sign_in_flows(flow.created_at)
            if tx.pending_sign_in_flows(flow.created_at) >= MAX_PENDING_FLOWS:
                raise SignInBusy(
                    f"{MAX_PENDING_FLOWS} sign-ins are in progress already; try again in a "
                    "few minutes"
                )
            tx.insert_sign_in_flow(flow)

    def _read_flow(self, flow_id: str) -> SignInFlow | None:
        with self.store.read() as tx:
            return tx.sign_in_flow(flow_digest(flow_id))

    def _mark_used(self, digest: bytes) -> bool:
        with self.store.write() as tx:
            return tx.use_sign_in_flow(digest, self.clock.now())

    def _chain(self, refresh_digest: bytes) -> ApiSession | None:
        with self.store.read() as tx:
            return tx.session_by_refresh(refresh_digest)

    def _sign_out(self, digest: bytes, at: datetime, revoking: bool) -> bool:
        def change(tx: StoreTx) -> Fact | None:
            session = tx.api_session(digest)
            if session is None:
                return None
            tx.revoke_api_session(digest, at)  # a no-op for one already ended
            return SignedOutFact(session.user, session.public_id, revoking)

        return self._changed(change) is not None

    def _remove(self, subject: str, evidence: str, at: datetime) -> UserName | None:
        """Mark the person gone and end their sessions; their name, or None if not known."""

        def change(tx: StoreTx) -> Fact | None:
            person = tx.person_by_subject(self.settings.issuer, subject)
            if person is None:
                return None
            tx.remove_person(person.user, at)
            tx.revoke_sessions_of(person.issuer, person.subject, at)
            return RemovedFact(person.user, person.issuer, person.subject, evidence)

        fact = self._changed(change)
        if isinstance(fact, RemovedFact):
            log.warning("%s was removed at the identity provider (%s)", fact.user, evidence)
            return UserName(fact.user)
        return None

    def _record(
        self, person: Person, session: ApiSession, now: datetime, method: str,
        replaces: bytes | None,
    ) -> None:  # fmt: skip
        """Write the person and their session, unless the name is another subject's; a
        refresh ends the sessions its refresh token was given with (one per sign-in)."""

        def change(tx: StoreTx) -> Fact:
            _check_name(tx, person)
            tx.put_person(
                PersonRecord(
                    person.user, person.issuer, person.subject, person.email, person.groups, now
                )
            )
            replaced = 0 if replaces is None else tx.revoke_refresh_chain(replaces, now)
            tx.prune_api_sessions(now - self.settings.session_ttl)
            tx.insert_api_session(session)
            return SignedInFact(person.user, person.issuer, person.subject, person.groups,
                                method, session.public_id, session.expires_at,
                                replaced)  # fmt: skip

        self._changed(change)


def _check_name(tx: StoreTx, person: Person) -> None:
    """SignInRefused unless the user name and the subject are each other's (or new)."""
    named = tx.person(person.user)
    if named is not None and (named.issuer, named.subject) != (person.issuer, person.subject):
        raise SignInRefused(
            "name_taken",
            f"the user name {person.user!r} belongs to another account of the identity "
            "provider; ask an admin",
            user=person.user,
        )
    same = tx.person_by_subject(person.issuer, person.subject)
    if same is not None and same.user != person.user:
        raise SignInRefused(
            "name_taken",
            f"this account signed in before as {same.user!r}; a renamed account needs an admin",
            user=person.user,
        )


def audited_change(
    store: Store, audit: SignInAudit | None, change: Callable[[StoreTx], Fact | None]
) -> Fact | None:
    """Run `change` in one write transaction; the fact it returns is recorded ahead of the
    COMMIT (record.py), and whether it took effect after."""
    seq: int | None = None
    try:
        with store.write() as tx:
            fact = change(tx)
            if fact is not None and audit is not None:
                seq = audit.ahead(fact)  # last: a refusal here rolls it all back
    except BaseException as exc:
        if seq is not None and audit is not None:
            audit.settled(seq, committed=False, error=str(exc) or type(exc).__name__)
        raise
    if seq is not None and audit is not None:
        audit.settled(seq, committed=True, error="")
    return fact


def digest_of(refresh_token: str) -> bytes:
    """What a session keeps of its refresh token: enough to recognise it, useless to use."""
    return hashlib.sha256(refresh_token.encode("utf-8")).digest()


def sign_in_service(
    settings: OidcSettings | None, store: Store, clock: Clock, base: Callable[[], Policy],
    registry: CollectorRegistry | None = None, *, audit: SignInAudit | None = None,
    on_removed: Callable[[UserName], object] | None = None,
) -> SignInService | None:  # fmt: skip
    """The service for `identity.oidc` (None when not configured), its people read (blocking)."""
    if settings is None:
        return None
    people = EffectivePolicy(base, store)
    people.refresh()
    return SignInService(settings, store, clock, people, registry, audit=audit,
                         on_removed=on_removed)  # fmt: skip
