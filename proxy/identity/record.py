"""What single sign-on tells the audit log, as plain facts (identity imports no audit code: the
runtime turns them into audit events, proxy/runtime/identity_audit.py).

A change to who may act — a sign-in or refresh (a session made, maybe older ones ended), a
sign-out, a person gone at the provider — is recorded *ahead* of its state-store commit, as the
lifecycle's records are: `SignInAudit.ahead(fact)` runs inside the write transaction, before its
COMMIT, and raises if the record cannot be written (the transaction then rolls back: nothing
changes unrecorded); `settled(seq, committed, error)` follows the commit, or its failure.
A refusal changes nothing: `refused(fact)` records it after the fact, and a failure to do so is
logged by the sink, never a reason to answer otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SignedInFact:
    user: str
    issuer: str
    subject: str
    groups: tuple[str, ...]
    method: str  # device | browser | refresh
    session: str  # the session's public id, never its token
    expires_at: datetime
    replaced: int = 0  # sessions of the same sign-in a refresh ended


@dataclass(frozen=True, slots=True)
class SignedOutFact:
    user: str
    session: str
    refresh_token_revoked: bool


@dataclass(frozen=True, slots=True)
class RemovedFact:
    user: str
    issuer: str
    subject: str
    evidence: str  # what the provider said that makes it definitive (removal.py)


@dataclass(frozen=True, slots=True)
class RefusedFact:
    method: str
    reason: str
    issuer: str
    user: str  # "" when not known
    detail: str


Fact = SignedInFact | SignedOutFact | RemovedFact


class SignInAudit(Protocol):
    def ahead(self, fact: Fact) -> int:
        """Write `fact` before the COMMIT; its seq. Raises to refuse the change."""
        ...

    def settled(self, seq: int, *, committed: bool, error: str) -> None: ...

    def refused(self, fact: RefusedFact) -> None: ...
