"""Who may see what through the API: pure functions of the current policy.

The lifecycle decides who may *act* on a request (`rules.py`: approve, deny, cancel, revoke, get
the credential); these decide who may *see* one, and who may see and end a live session:

- a requester sees their own requests and sessions;
- an approver sees the requests and sessions of every (target, access level) whose approval rule
  lists them (per the policy in force now, `Policy.can_approve`);
- an admin (`Policy.is_admin`) sees everything;
- a session may be ended by an admin or an eligible approver of its target and level.

A request or session the caller may not see is answered exactly like one that does not exist
(404), so ids cannot be probed.
"""

from __future__ import annotations

from proxy.grants.requests import AccessRequest
from proxy.grants.store import RequestQuery
from proxy.policy.models import AccessLevelName, Policy, TargetName, UserName
from proxy.session.session import SessionInfo

Scope = tuple[TargetName, AccessLevelName]


def approver_scopes(policy: Policy, user: UserName) -> frozenset[Scope]:
    """Every (target, access level) whose approval rule lists `user`."""
    return frozenset(
        (target.name, level)
        for target in policy.targets.values()
        for level in target.access_levels
        if policy.can_approve(user, target.approval_for(level))
    )


def may_approve_scope(policy: Policy, user: UserName, target: str, level: str) -> bool:
    known = policy.targets.get(TargetName(target))
    if known is None or AccessLevelName(level) not in known.access_levels:
        return False
    return policy.can_approve(user, known.approval_for(AccessLevelName(level)))


def may_see_request(policy: Policy, request: AccessRequest, user: UserName) -> bool:
    return (
        user == request.requester
        or policy.is_admin(user)
        or may_approve_scope(policy, user, request.target, request.access_level)
    )


def visible_requests(policy: Policy, user: UserName, query: RequestQuery) -> RequestQuery:
    """`query` narrowed to what `user` may see."""
    if policy.is_admin(user):
        return RequestQuery(query.state, everything=True, limit=query.limit)
    scopes = approver_scopes(policy, user)
    return RequestQuery(query.state, requester=user, scopes=scopes, limit=query.limit)


def may_see_session(policy: Policy, info: SessionInfo, user: UserName) -> bool:
    return info.user == user or may_end_session(policy, info, user)


def may_end_session(policy: Policy, info: SessionInfo, user: UserName) -> bool:
    return policy.is_admin(user) or may_approve_scope(policy, user, info.target, info.access_level)
