"""Runtime values of the access workflow: requests, approvals, history, and grants at login.

These are what the store keeps and what the lifecycle (`lifecycle.py`) moves along; the policy
(`models.py`) is the other input. One `RequestId` follows a request from `pending` to its final
state: an approved request *is* the grant, with its window stored on the same record, so there is
never a second id to correlate in logs or the API.

All instants are timezone-aware UTC datetimes; the store refuses naive ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NewType

from proxy.auth.credentials import ScramVerifier
from proxy.policy.models import AccessLevelName, TargetName, UserName

RequestId = NewType("RequestId", str)

SYSTEM_ACTOR = UserName("<pgwarden>")
"""The actor recorded for what pgwarden does by itself (auto-approval, lapse, expiry).

The angle brackets keep it apart from any real user name a policy could declare.
"""

POLICY_ACTOR = UserName("<policy>")
"""The actor recorded when a policy change ends a grant (its user, target or level removed)."""

IDENTITY_ACTOR = UserName("<identity>")
"""The actor recorded when a person's identity provider says their account is gone
(proxy/identity/removal.py): their grants are revoked and pending requests cancelled."""


class RequestState(StrEnum):
    """Where a request is in its life; see `lifecycle.TRANSITIONS` for the moves between them."""

    PENDING = "pending"
    ACTIVE = "active"
    DENIED = "denied"
    CANCELLED = "cancelled"
    LAPSED = "lapsed"
    EXPIRED = "expired"
    REVOKED = "revoked"

    @property
    def is_final(self) -> bool:
        return self not in (RequestState.PENDING, RequestState.ACTIVE)


class Action(StrEnum):
    """What can happen to a request. Each applied action is one row of history."""

    CREATE = "create"
    APPROVE = "approve"  # one approval; the request stays pending until the quorum
    ACTIVATE = "activate"  # the quorum is reached (or an auto-approval rule matched)
    DENY = "deny"
    CANCEL = "cancel"
    LAPSE = "lapse"
    ISSUE_CREDENTIAL = "issue-credential"
    EXPIRE = "expire"
    REVOKE = "revoke"


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """A request for access and, once active, the grant it became.

    `requested_duration` is what the requester asked for; `duration` is what they get after
    clamping to the level's and target's maximum (`clamped` tells the API to say so).
    `activated_at`/`ends_at` are the window, set at activation (never at first connect).
    `closed_*` say who ended the request, when and why, once it is in a final state.
    """

    id: RequestId
    requester: UserName
    target: TargetName
    access_level: AccessLevelName
    requested_duration: timedelta
    duration: timedelta
    reason: str
    state: RequestState
    created_at: datetime
    activated_at: datetime | None = None
    ends_at: datetime | None = None
    closed_at: datetime | None = None
    closed_by: UserName | None = None
    close_reason: str | None = None

    @property
    def clamped(self) -> bool:
        return self.duration < self.requested_duration


@dataclass(frozen=True, slots=True)
class Approval:
    """One person's approval of one request (a person approves a request at most once)."""

    approver: UserName
    at: datetime
    comment: str


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of a request's history: which action moved it from where to where, who, when, why.

    `from_state` is None only for creation; `from_state == to_state` for actions that do not
    change the state (an approval below the quorum, issuing a credential).
    """

    request_id: RequestId
    action: Action
    from_state: RequestState | None
    to_state: RequestState
    actor: UserName
    at: datetime
    why: str


@dataclass(frozen=True, slots=True)
class ActiveGrant:
    """What the proxy needs at login: an active grant that has a credential.

    `credential_issued_at` orders several grants of one user on one target (see `decide.py`).
    """

    request_id: RequestId
    user: UserName
    target: TargetName
    access_level: AccessLevelName
    activated_at: datetime
    ends_at: datetime
    verifier: ScramVerifier
    credential_issued_at: datetime


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A temporary password, returned once to its requester; pgwarden keeps only the verifier."""

    request_id: RequestId
    username: UserName
    password: str = field(repr=False)  # never in a repr, so never in a log line by accident
    expires_at: datetime
