"""When a refused refresh counts as the provider saying the account is gone (removal.py)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.identity.flows import TokenAnswer
from proxy.identity.removal import named_gone, vouched_subject

GRANT = TokenAnswer(
    400, {"error": "invalid_grant", "error_description": "grant request is invalid"}
)


@pytest.mark.parametrize("said", [
    "AADSTS50057: User account is disabled.",
    "AADSTS50034: The user account does not exist in the contoso directory.",
    "User disabled",
])  # fmt: skip
def test_a_refusal_naming_the_account_is_definitive(said: str) -> None:
    assert named_gone(TokenAnswer(400, {"error": "invalid_grant", "error_description": said}))


@pytest.mark.parametrize("answer", [
    GRANT,
    TokenAnswer(400, {"error": "invalid_grant", "error_description": "Token is expired"}),
    TokenAnswer(401, {"error": "invalid_client", "error_description": "user not found"}),
    TokenAnswer(400, {"error": "invalid_grant"}),
])  # fmt: skip
def test_other_refusals_are_not(answer: TokenAnswer) -> None:
    assert named_gone(answer) is None


@pytest.mark.parametrize(("introspection", "subject"), [
    ({"active": True, "sub": "s-1"}, "s-1"),
    ({"active": False}, None),  # expired, revoked or reused: the token's fault
    ({"active": True}, None),  # whose?
    ({"active": "yes", "sub": "s-1"}, None),
    (None, None),  # no introspection endpoint, or it did not answer
])  # fmt: skip
def test_an_active_token_refused_is_refused_for_its_account(
    introspection: dict[str, Any] | None, subject: str | None
) -> None:
    assert vouched_subject(GRANT, introspection) == subject
    assert vouched_subject(TokenAnswer(400, {"error": "invalid_request"}), introspection) is None
