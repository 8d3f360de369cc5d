"""The login decision, as a pure function: may this user reach this target now, with which grant?

`decide(user, target, grants, policy, now)` takes the active grants the store holds for the user
and target (each with a credential) and the *current* policy, and returns `Allow(grant, ends_at)`
or `Deny(reason)`. It does no I/O and reads no clock, so the proxy can call it again at the last
step of a login (SECURITY.md row 16) and tests can table it.

Rules:
- names match exactly, byte for byte: `Prod` is not `prod`, `alice ` is not `alice` (row 21);
- a grant authorizes only while its user, its target and its access level are still in the
  policy — removing any of them from the YAML revokes in effect at the next login;
- the window ends at `ends_at`, exclusive: at `ends_at` the grant is over. Only the end is
  checked: the window starts at activation, before which no grant exists, and a wall clock that
  jumps back must not cut a live grant short (row 30);
- with several usable grants (say read-only and read-write on one target), each credential logs
  in to its own grant: `Allow.grant` is the one whose credential was issued most recently (ties
  go to the later activation, then the higher id, so the choice is deterministic) and
  `Allow.others` the rest, newest first; the proxy checks a login's proof against each.

`Deny.reason` is for logs and audit only: a client is told the same 28P01 whatever it is (row 14).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from proxy.grants.requests import ActiveGrant
from proxy.policy.models import Policy, TargetName, UserName


@dataclass(frozen=True, slots=True)
class Allow:
    grant: ActiveGrant
    ends_at: datetime
    others: tuple[ActiveGrant, ...] = ()  # the other usable grants, newest credential first

    @property
    def grants(self) -> tuple[ActiveGrant, ...]:
        return (self.grant, *self.others)


@dataclass(frozen=True, slots=True)
class Deny:
    reason: str  # internal: never shown to an unauthenticated client


Decision = Allow | Deny


def decide(
    user: UserName,
    target: TargetName,
    grants: Iterable[ActiveGrant],
    policy: Policy,
    now: datetime,
) -> Decision:
    """Allow with the chosen grant, or Deny with the reason (see the module docstring)."""
    if user not in policy.users:
        return Deny(f"user {user!r} is not in the policy")
    if target not in policy.targets:
        return Deny(f"target {target!r} is not in the policy")
    usable: list[ActiveGrant] = []
    problems: list[str] = []
    for grant in grants:
        problem = _problem(grant, user, target, policy, now)
        if problem is None:
            usable.append(grant)
        else:
            problems.append(f"grant {grant.request_id}: {problem}")
    if not usable:
        return Deny("; ".join(problems) or f"no active grant for {user!r} on {target!r}")
    chosen, *others = sorted(
        usable, key=lambda g: (g.credential_issued_at, g.activated_at, g.request_id), reverse=True
    )
    return Allow(chosen, chosen.ends_at, tuple(others))


def _problem(
    grant: ActiveGrant, user: UserName, target: TargetName, policy: Policy, now: datetime
) -> str | None:
    """Why `grant` cannot authorize this login, or None if it can."""
    if grant.user != user or grant.target != target:
        return f"belongs to {grant.user!r} on {grant.target!r}"
    if policy.level(target, grant.access_level) is None:
        return f"access level {grant.access_level!r} is no longer in the policy"
    if now >= grant.ends_at:
        return f"ended at {grant.ends_at.isoformat()}"
    return None
