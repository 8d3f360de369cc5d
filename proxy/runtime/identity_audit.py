"""Single sign-on in the server: its service, wired to the audit log and the grants.

`sign_in_service` builds the `identity.oidc` service with two hooks: `IdentityAuditor`, and
`end_grants`, which ends the grants of a person their provider says is gone (revoked or
cancelled by `<identity>`, proxy/identity/removal.py).

`IdentityAuditor`: identity facts (proxy/identity/record.py) turned into audit events, written
ahead of their state-store commit like the lifecycle's (`auditing.LifecycleAuditor`): with
`audit.fsync: always` the record is on disk before the COMMIT, and a record that cannot be
written refuses the sign-in (503: the sign-in service answers so); one `lifecycle.outcome`
record then says whether the change took effect, so `audit verify` pairs them as it pairs the
lifecycle's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from proxy.audit import AuditLog, AuditUnavailable
from proxy.audit.events import (
    AuditEvent,
    LifecycleOutcome,
    PersonRemoved,
    PersonSignedIn,
    PersonSignedOut,
    SignInRefusal,
)
from proxy.clock import Clock
from proxy.config import FsyncPolicy, ServerConfig
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import IDENTITY_ACTOR
from proxy.grants.store import Store
from proxy.identity.errors import IdpUnavailable
from proxy.identity.record import Fact, RefusedFact, RemovedFact, SignedInFact, SignedOutFact
from proxy.identity.signin import SignInService
from proxy.identity.signin import sign_in_service as identity_service
from proxy.policy.models import Policy, UserName

log = logging.getLogger(__name__)

DURABLE_TIMEOUT = 5.0  # seconds a sign-in waits for its record's fsync (`fsync: always`)
GONE = "the identity provider says the account no longer exists or is disabled"


def sign_in_service(
    config: ServerConfig, store: Store, clock: Clock, policy: Callable[[], Policy], *,
    registry: CollectorRegistry, audit: AuditLog, grants: Callable[[], GrantService],
) -> SignInService | None:  # fmt: skip
    """The service for `identity.oidc` (None without it); `grants`: the runtime's, once built."""

    def end_grants(user: UserName) -> None:
        grants().end_all_of(user, IDENTITY_ACTOR, GONE)

    auditor = IdentityAuditor(audit, wait_durable=config.audit.fsync is FsyncPolicy.ALWAYS)
    return identity_service(config.identity, store, clock, policy, registry, audit=auditor,
                            on_removed=end_grants)  # fmt: skip


class IdentityAuditor:
    """`SignInAudit` on the server's audit log."""

    def __init__(self, audit: AuditLog, *, wait_durable: bool) -> None:
        self._audit, self._wait_durable = audit, wait_durable

    def ahead(self, fact: Fact) -> int:
        event = _event(fact)
        try:
            seq = self._audit.append(event)
            if self._wait_durable:
                self._audit.durable(seq).result(DURABLE_TIMEOUT)
        except (AuditUnavailable, TimeoutError) as exc:
            log.error("refused (%s): the audit log cannot record it: %s", event.kind, exc)
            # Nobody's fault and nothing changed: the caller answers 503, "try again shortly".
            raise IdpUnavailable(
                "the audit log cannot be written, so no sign-in is recorded"
            ) from None
        return seq

    def settled(self, seq: int, *, committed: bool, error: str) -> None:
        try:
            self._audit.append(LifecycleOutcome(seq, seq, committed, error))
        except AuditUnavailable as exc:  # the sink has logged and counted it
            log.error("outcome of audit record %d not recorded: %s", seq, exc)

    def refused(self, fact: RefusedFact) -> None:
        try:
            self._audit.append(
                SignInRefusal(fact.method, fact.reason, fact.issuer, fact.user, fact.detail)
            )
        except AuditUnavailable as exc:  # a refusal changed nothing: logged, not fatal
            log.error("refused sign-in not recorded: %s", exc)


def _event(fact: Fact) -> AuditEvent:
    if isinstance(fact, SignedInFact):
        return PersonSignedIn(fact.user, fact.issuer, fact.subject, fact.groups, fact.method,
                              fact.session, fact.expires_at, fact.replaced)  # fmt: skip
    if isinstance(fact, SignedOutFact):
        return PersonSignedOut(fact.user, fact.session, fact.refresh_token_revoked)
    assert isinstance(fact, RemovedFact)
    return PersonRemoved(fact.user, fact.issuer, fact.subject, fact.evidence)
