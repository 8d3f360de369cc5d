"""When a refused refresh means the person is gone, and what then ends.

A refresh the provider refuses with `invalid_grant` is by itself ambiguous: the refresh token
may have expired, been revoked (a sign-out elsewhere), been used twice (rotation), or its account
deleted or disabled. Only the last must end what the person holds, so pgwarden acts only when
the provider says so definitively, in one of two ways:

- its answer names the account: the `error_description` carries one of `GONE_PHRASES`
  (Microsoft Entra ID's AADSTS50057 "user account is disabled" and AADSTS50034 "does not
  exist in the directory"; Keycloak's "User disabled"; a provider that words it "account not
  found");
- or it vouches for the token it refuses: introspection (RFC 7662) of that same refresh token,
  asked at once, answers `active: true` for a subject pgwarden knows. An expired, revoked or
  reused token is inactive; an active token whose grant is refused is refused for its account
  (oidc-provider, for one, refuses so when its account lookup finds nobody, and hides why).

A provider that cannot be reached, a 5xx, an inactive or unknown token, a provider without
introspection: none of these is a removal. The refresh is refused (401, "sign in again") and
nothing else changes. A removal (`SignInService.refresh`) marks the person's row `removed_at`
(the effective policy leaves them out: their groups count for no approval), ends their live
sessions, records `identity.person_removed`, and ends their grants: active grants revoked and
pending requests cancelled by `<identity>` (IDENTITY_ACTOR), each with its own lifecycle record.
The person's next successful sign-in clears `removed_at`; ended grants stay ended. A group
change is not a removal: it takes away at once what the group gave for approvals, and active
grants stay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from proxy.identity.flows import TokenAnswer

GONE_PHRASES: Final = (
    "aadsts50057",  # Entra ID: the user account is disabled
    "aadsts50034",  # Entra ID: the user account does not exist in the directory
    "user disabled",  # Keycloak
    "account disabled",
    "account not found",
    "user not found",
)


def named_gone(answer: TokenAnswer) -> str | None:
    """The provider's own words when its refusal names the account as gone, else None."""
    if answer.error != "invalid_grant":
        return None
    said = answer.body.get("error_description")
    if not isinstance(said, str):
        return None
    lowered = said.lower()
    return said[:200] if any(phrase in lowered for phrase in GONE_PHRASES) else None


def vouched_subject(answer: TokenAnswer, introspection: Mapping[str, Any] | None) -> str | None:
    """The subject of a refused refresh token that introspection says is active, else None."""
    if answer.error != "invalid_grant" or introspection is None:
        return None
    subject = introspection.get("sub")
    if introspection.get("active") is not True or not isinstance(subject, str) or not subject:
        return None
    return subject
