"""The request → grant lifecycle: one transition table, and the service that applies it.

    (new) ──create──▶ pending ──activate──▶ active ──expire──▶ expired
                        │ ├──deny──▶ denied     └──revoke──▶ revoked
                        │ ├──cancel──▶ cancelled
                        │ └──lapse──▶ lapsed
                        └─approve (below the quorum) ─▶ pending

`TRANSITIONS` is the single source of truth: every action, including the ones that keep the state
(an approval below the quorum, issuing a credential), is looked up there, and anything not in it
raises `LifecycleError`. Each applied action writes one history row (who, when, why).

`GrantService` is the only writer. Each operation is one store write transaction: it reads the
request, first applies what is already due (a pending request past the policy's pending timeout
lapses, an active one past its window expires — so every read and write sees the *effective*
state, stored), then checks the actor against the *current* policy and applies the action.
Because the store serializes write transactions, concurrent approvers cannot lose an approval or
activate a request twice.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final

from proxy.auth.credentials import DEFAULT_ITERATIONS, generate_password, make_verifier
from proxy.clock import Clock
from proxy.errors import PgwardenError, Severity
from proxy.grants.decide import Allow, Decision, decide
from proxy.grants.grant_cache import GrantCache
from proxy.grants.requests import (
    POLICY_ACTOR,
    SYSTEM_ACTOR,
    AccessRequest,
    Action,
    ActiveGrant,
    Approval,
    IssuedCredential,
    RequestId,
    RequestState,
    Transition,
)
from proxy.grants.rules import (
    NotPermitted,
    check_approver,
    check_text,
    count_approvals,
    due_action,
    granted_duration,
    matching_auto_approval,
    may_cancel,
    may_deny,
    may_revoke,
    policy_problem,
    require_rule,
)
from proxy.grants.store import (
    MAX_LIST_LIMIT,
    RequestQuery,
    StateStoreUnavailable,
    Store,
    StoreTx,
)
from proxy.policy.models import AccessLevelName, Policy, TargetName, UserName

_PENDING, _ACTIVE = RequestState.PENDING, RequestState.ACTIVE

# (state before, action) -> state after. `None` is "not created yet". Nothing leaves a final state.
TRANSITIONS: Final[Mapping[tuple[RequestState | None, Action], RequestState]] = MappingProxyType(
    {
        (None, Action.CREATE): _PENDING,
        (_PENDING, Action.APPROVE): _PENDING,  # below the quorum
        (_PENDING, Action.ACTIVATE): _ACTIVE,  # quorum reached, or auto-approved
        (_PENDING, Action.DENY): RequestState.DENIED,
        (_PENDING, Action.CANCEL): RequestState.CANCELLED,
        (_PENDING, Action.LAPSE): RequestState.LAPSED,
        (_ACTIVE, Action.ISSUE_CREDENTIAL): _ACTIVE,
        (_ACTIVE, Action.EXPIRE): RequestState.EXPIRED,
        (_ACTIVE, Action.REVOKE): RequestState.REVOKED,
    }
)

REQUEST_ID_BYTES = 8  # 64 random bits: unguessable, and short enough to read out in a message

_PARTICIPLES: Final[Mapping[Action, str]] = {
    Action.CREATE: "created",
    Action.APPROVE: "approved",
    Action.ACTIVATE: "activated",
    Action.DENY: "denied",
    Action.CANCEL: "cancelled",
    Action.LAPSE: "lapsed",
    Action.ISSUE_CREDENTIAL: "given a credential",
    Action.EXPIRE: "expired",
    Action.REVOKE: "revoked",
}


class LifecycleError(PgwardenError):
    """An action that the transition table does not allow from the request's state."""

    sqlstate = "55000"  # object_not_in_prerequisite_state
    severity = Severity.ERROR

    def __init__(self, request_id: RequestId, state: RequestState, action: Action) -> None:
        done = _PARTICIPLES[action]
        if _still_possible(state, action):
            allowing = " or ".join(str(s) for (s, a) in TRANSITIONS if a is action and s)
            message = f"request {request_id} is {state}; it can only be {done} once {allowing}"
        else:
            message = f"request {request_id} is {state}; it can no longer be {done}"
        super().__init__(message)
        self.request_id, self.state, self.action = request_id, state, action


class NotAudited(PgwardenError):
    """The audit log could not record an action before it took effect: nothing changed."""

    sqlstate = "58030"  # io_error
    severity = Severity.ERROR


class RequestNotFound(PgwardenError):
    sqlstate = "42704"  # undefined_object
    severity = Severity.ERROR

    def __init__(self, request_id: RequestId) -> None:
        super().__init__(f"no request {request_id}")


def next_state(request_id: RequestId, state: RequestState | None, action: Action) -> RequestState:
    """The state `action` leads to from `state`, per `TRANSITIONS`; LifecycleError if none."""
    new = TRANSITIONS.get((state, action))
    if new is None:
        if state is None:
            raise PgwardenError(f"request {request_id} must be created before it is {action}")
        raise LifecycleError(request_id, state, action)
    return new


def _still_possible(state: RequestState, action: Action) -> bool:
    """Whether some state reachable from `state` allows `action` (for the error's wording)."""
    seen, frontier = {state}, [state]
    while frontier:
        current = frontier.pop()
        for (source, _action), target in TRANSITIONS.items():
            if source is current and target not in seen:
                seen.add(target)
                frontier.append(target)
    return any((reached, action) in TRANSITIONS for reached in seen - {state})


class GrantService:
    """Creates, approves and ends requests and issues their credentials, under the current policy.

    Every operation takes the acting user explicitly. `policy` is called once per operation, so
    a reloaded policy applies from the next call on. Operations raise `RequestNotFound`,
    `LifecycleError` (not possible from the state), `NotPermitted` (not this actor) or
    `InvalidRequest` (does not fit the policy).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        policy: Callable[[], Policy],
        *,
        on_credential: Callable[[IssuedCredential], None] | None = None,
        cache: GrantCache | None = None,
    ) -> None:
        self._store, self._cache = store, cache  # cache: a replica's (grant_cache.py)
        self._clock = clock
        self._policy = policy
        # Told each credential issued (the audit log's redactor must know the new password).
        self._on_credential = on_credential
        self._swept_policy: Policy | None = None  # the policy whose removals were last swept

    def create_request(
        self,
        requester: UserName,
        target: TargetName,
        access_level: AccessLevelName,
        duration: timedelta,
        reason: str,
    ) -> AccessRequest:
        """A new request: pending, or already active if an auto-approval rule matches.

        The granted duration is `duration` clamped to the level's and target's maximum;
        `AccessRequest.clamped` tells the caller to say so.
        """
        policy, now = self._policy(), self._clock.now()
        new_id = RequestId(secrets.token_hex(REQUEST_ID_BYTES))
        draft = AccessRequest(
            new_id, requester, target, access_level, duration, duration, reason, _PENDING, now
        )
        request = replace(draft, duration=granted_duration(policy, draft))
        auto = matching_auto_approval(policy, request)
        with self._store.write() as tx:
            tx.insert_request(request)
            _record(tx, None, request, Action.CREATE, actor=requester, now=now, why=reason)
            if auto is not None:
                why = f"auto-approved (rule for up to {auto.max_duration})"
                request = _apply(tx, request, Action.ACTIVATE, actor=SYSTEM_ACTOR, now=now, why=why)
        return request

    def approve(
        self, request_id: RequestId, approver: UserName, comment: str = ""
    ) -> AccessRequest:
        """Record `approver`'s approval; activate the request when the quorum is reached.

        Approving again while pending is a no-op. Refused once the request left `pending`, for
        the requester (admins included), and for anyone not eligible under the current policy.
        """
        check_text("comment", comment)
        self.get(request_id)  # commits a due lapse even though the approval is then refused
        with self._store.write() as tx:
            policy, now = self._policy(), self._clock.now()
            request = _settled(tx, request_id, policy, now)
            next_state(request.id, request.state, Action.APPROVE)
            rule = check_approver(policy, request, approver)
            if not tx.add_approval(request.id, Approval(approver, now, comment)):
                return request  # a double click: the first one already counts
            count = count_approvals(policy, request, tx.approvals(request.id))
            tally = f"{count} of {rule.required_approvals} approvals"
            why = f"{tally}: {comment}" if comment else tally
            _record(tx, request, request, Action.APPROVE, actor=approver, now=now, why=why)
            if count >= rule.required_approvals:
                request = _apply(tx, request, Action.ACTIVATE, actor=approver, now=now, why=tally)
            return request

    def deny(self, request_id: RequestId, approver: UserName, reason: str) -> AccessRequest:
        """End a pending request: an eligible approver or an admin (a requester cancels)."""
        return self._end(request_id, Action.DENY, approver, reason, may_deny)

    def cancel(self, request_id: RequestId, requester: UserName) -> AccessRequest:
        """Withdraw a pending request: only its requester."""
        return self._end(request_id, Action.CANCEL, requester, "withdrawn", may_cancel)

    def revoke(self, request_id: RequestId, actor: UserName, reason: str) -> AccessRequest:
        """End an active grant now: an eligible approver, an admin, or the requester."""
        return self._end(request_id, Action.REVOKE, actor, reason, may_revoke)

    def end_all_of(self, user: UserName, actor: UserName, why: str) -> list[AccessRequest]:
        """pgwarden's own act (no permission check): revoke `user`'s active grants and cancel
        their pending requests, as when their identity provider says the account is gone."""
        with self._store.write() as tx:
            now = self._clock.now()
            mine = [r for state in (_ACTIVE, _PENDING) for r in tx.list_requests(
                RequestQuery(state, requester=user, limit=MAX_LIST_LIMIT))]  # fmt: skip
            return [_apply(tx, r, Action.REVOKE if r.state is _ACTIVE else Action.CANCEL,
                           actor=actor, now=now, why=why) for r in mine]  # fmt: skip

    def issue_credential(self, request_id: RequestId, actor: UserName) -> IssuedCredential:
        """A new temporary password for an active grant, returned once; replaces any previous one.

        Its verifier shares the salt of the requester's other active credentials, so that one
        SCRAM exchange (which shows one salt) can check a login against each of them: a user
        with two grants on one target logs in with either password. The passwords are random
        (190 bits), so a shared salt gives an attacker nothing a per-credential salt would deny.

        Runs PBKDF2 (`make_verifier`) in the calling thread, outside the store's write lock: an
        async caller (the HTTP API) must run this in an executor, never on the event loop.
        """
        request = self.get(request_id)
        _check_issue(self._policy(), request, actor)  # refuse before paying PBKDF2
        password = generate_password()
        with self._store.read() as tx:
            salt = _shared_salt(tx, self._policy(), request)
        verifier = make_verifier(password, salt=salt)
        with self._store.write() as tx:
            policy, now = self._policy(), self._clock.now()
            request = _settled(tx, request_id, policy, now)
            _check_issue(policy, request, actor)
            if (salt_now := _shared_salt(tx, policy, request)) != salt:
                # Another of the user's credentials was issued meanwhile: join its salt (rare).
                verifier = make_verifier(password, salt=salt_now)
            why = "issued" if tx.credential(request.id) is None else "re-issued; the old one ends"
            tx.set_credential(request.id, verifier, now)
            _record(tx, request, request, Action.ISSUE_CREDENTIAL, actor=actor, now=now, why=why)
        assert request.ends_at is not None  # an active request has its window
        issued = IssuedCredential(request.id, request.requester, password, request.ends_at)
        if self._on_credential is not None:
            self._on_credential(issued)
        return issued

    def get(self, request_id: RequestId) -> AccessRequest:
        """The request in its effective state: a due lapse or expiry is applied (and stored)
        before it is returned, so no read ever reports a finished grant as active."""
        policy, now = self._policy(), self._clock.now()
        with self._store.read() as tx:
            request = tx.get_request(request_id)
        if request is None:
            raise RequestNotFound(request_id)
        if due_action(request, policy, now) is None:
            return request
        with self._store.write() as tx:
            return _settled(tx, request_id, policy, now)

    def approvals(self, request_id: RequestId) -> tuple[Approval, ...]:
        with self._store.read() as tx:
            return tx.approvals(request_id)

    def history(self, request_id: RequestId) -> tuple[Transition, ...]:
        self.get(request_id)  # settle first, so the history includes a due lapse or expiry
        with self._store.read() as tx:
            return tx.history(request_id)

    def list_requests(self, query: RequestQuery) -> tuple[AccessRequest, ...]:
        """Requests matching `query`, newest first, in their effective state (what is due is
        applied first, as for `get`)."""
        self.sweep()
        with self._store.read() as tx:
            return tx.list_requests(query)

    def sweep(self) -> list[AccessRequest]:
        """Lapse and expire everything due now (a janitor calls this about once a second)."""
        return self.expire_due(self._clock.now())

    def expire_due(self, now: datetime) -> list[AccessRequest]:
        """Lapse and expire everything due at `now`; returns the requests that changed."""
        policy = self._policy()
        new_policy = policy is not self._swept_policy
        with self._store.read() as tx:
            due, complete = _due(tx, policy, now, new_policy)
        if due:
            with self._store.write() as tx:
                due, complete = _due(tx, policy, now, new_policy)  # again, under the lock
                due = [_settle(tx, request, policy, now) for request in due]
        if complete:
            self._swept_policy = policy
        return due

    def login_decision(
        self, user: UserName, target: TargetName, now: datetime, *, fresh: bool = False
    ) -> Decision:
        """Whether `user` may log in to `target` at `now`, and with which grant (`decide.py`).
        A replica answers from memory when it can; a refusal, or `fresh`, reads the store: a
        credential issued on another replica a moment ago may not have reached memory yet."""
        policy = self._policy()
        cached = None if self._cache is None or fresh else self._cache.current(user, target)
        if cached is not None:
            decision = decide(user, target, cached, policy, now)
            if isinstance(decision, Allow):
                return decision
        return decide(user, target, self._read_grants(user, target), policy, now)

    @property
    def caching(self) -> bool:
        """Whether logins may be answered from a replica's memory (`grant_cache.py`)."""
        return self._cache is not None

    def _read_grants(self, user: UserName, target: TargetName) -> tuple[ActiveGrant, ...]:
        try:
            with self._store.read() as tx:
                return tx.active_grants(user, target)
        except StateStoreUnavailable:
            known = None if self._cache is None else self._cache.last_known(user, target)
            if known is None:
                raise  # no memory, or older than max_staleness: fail closed
            return known

    def active_grant(self, user: UserName, target: TargetName, now: datetime) -> ActiveGrant | None:
        """The grant a login of `user` to `target` gets at `now`, or None (see `decide.py`)."""
        decision = self.login_decision(user, target, now)
        return decision.grant if isinstance(decision, Allow) else None

    def changes(self) -> int:
        """The store's change counter: poll it to notice revocations without reading requests.
        A replica whose feed is listening knows it without asking (`grant_cache.py`)."""
        cache = self._cache
        if cache is not None and cache.is_current():
            return cache.known
        return self._store.changes()

    def _end(
        self,
        request_id: RequestId,
        action: Action,
        actor: UserName,
        reason: str,
        allowed: Callable[[Policy, AccessRequest, UserName], bool],
    ) -> AccessRequest:
        check_text("reason", reason)
        self.get(request_id)  # commits a due lapse or expiry even if the action is then refused
        with self._store.write() as tx:
            policy, now = self._policy(), self._clock.now()
            request = _settled(tx, request_id, policy, now)
            next_state(request.id, request.state, action)
            if not allowed(policy, request, actor):
                raise NotPermitted(f"{actor} may not {action} request {request.id}")
            why = reason or f"{action} by {actor}"
            return _apply(tx, request, action, actor=actor, now=now, why=why)


def _shared_salt(tx: StoreTx, policy: Policy, request: AccessRequest) -> bytes | None:
    """The salt of the requester's newest other active credential, or None (a fresh one)."""
    others = [
        grant
        for target in policy.targets
        for grant in tx.active_grants(request.requester, target)
        if grant.request_id != request.id and grant.verifier.iterations == DEFAULT_ITERATIONS
    ]
    newest = max(others, key=lambda g: (g.credential_issued_at, g.request_id), default=None)
    return newest.verifier.salt if newest is not None else None


def _check_issue(policy: Policy, request: AccessRequest, actor: UserName) -> None:
    next_state(request.id, request.state, Action.ISSUE_CREDENTIAL)
    if actor != request.requester:
        raise NotPermitted(f"only {request.requester} can get the credential of {request.id}")
    require_rule(policy, request)  # a grant whose level left the policy authorizes nothing


def _due(
    tx: StoreTx, policy: Policy, now: datetime, new_policy: bool
) -> tuple[list[AccessRequest], bool]:
    """What is due by time; with a policy not swept yet, also the active grants it no longer
    allows (a reload, or a policy edited while pgwarden was stopped). The flag is False when
    there may be more of those than one read returns: the next sweep goes on."""
    due = list(tx.due_requests(now, policy.pending_timeout))
    if not new_policy:
        return due, True
    query = RequestQuery(state=RequestState.ACTIVE, everything=True, limit=MAX_LIST_LIMIT)
    active = tx.list_requests(query)
    seen = {request.id for request in due}
    due += [r for r in active if r.id not in seen and policy_problem(policy, r) is not None]
    return due, len(active) < MAX_LIST_LIMIT


def _settled(tx: StoreTx, request_id: RequestId, policy: Policy, now: datetime) -> AccessRequest:
    request = tx.get_request(request_id)
    if request is None:
        raise RequestNotFound(request_id)
    return _settle(tx, request, policy, now)


def _settle(tx: StoreTx, request: AccessRequest, policy: Policy, now: datetime) -> AccessRequest:
    """Apply a due lapse, expiry or policy revocation. A lapse's or expiry's `closed_at` is when
    it became due, not when we noticed; a policy revocation's is now (when the policy changed is
    not known here)."""
    action = due_action(request, policy, now)
    if action is Action.LAPSE:
        due = request.created_at + policy.pending_timeout
        why = f"no decision within {policy.pending_timeout}"
    elif action is Action.EXPIRE:
        assert request.ends_at is not None
        due, why = request.ends_at, f"window ended at {request.ends_at.isoformat()}"
    elif action is Action.REVOKE:
        problem = policy_problem(policy, request)
        assert problem is not None
        return _apply(tx, request, action, actor=POLICY_ACTOR, now=now, why=problem)
    else:
        return request
    return _apply(tx, request, action, actor=SYSTEM_ACTOR, now=now, why=why, closed_at=due)


def _apply(
    tx: StoreTx,
    request: AccessRequest,
    action: Action,
    *,
    actor: UserName,
    now: datetime,
    why: str,
    closed_at: datetime | None = None,
) -> AccessRequest:
    """Move `request` by `action` per the table; store it and its history row; return it."""
    new_state = next_state(request.id, request.state, action)
    if action is Action.ACTIVATE:  # the window starts now, never at first connect
        after = replace(request, state=new_state, activated_at=now, ends_at=now + request.duration)
    elif new_state.is_final:
        when = now if closed_at is None else closed_at
        after = replace(request, state=new_state, closed_at=when, closed_by=actor, close_reason=why)
        tx.drop_credential(request.id)  # an ended grant keeps no verifier around
    else:
        after = replace(request, state=new_state)
    tx.update_request(after)
    _record(tx, request, after, action, actor=actor, now=now, why=why)
    return after


def _record(
    tx: StoreTx,
    before: AccessRequest | None,
    after: AccessRequest,
    action: Action,
    *,
    actor: UserName,
    now: datetime,
    why: str,
) -> None:
    """Write the history row for one applied action (checked against the table once more)."""
    from_state = None if before is None else before.state
    if TRANSITIONS.get((from_state, action)) is not after.state:
        raise AssertionError(f"{action} from {from_state} to {after.state} is not in the table")
    tx.add_transition(Transition(after.id, action, from_state, after.state, actor, now, why))
