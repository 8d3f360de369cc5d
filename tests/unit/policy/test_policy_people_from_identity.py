"""A policy read for a server with single sign-on (`people_from_identity`): people and groups
come from the identity provider too, so `users:` is optional and rules may name groups and users
no YAML user holds; `unheld_names` lists those (the warning that still shows a typo). Without
single sign-on the same policies are refused, as before."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from proxy.commands.checks import run_policy_check
from proxy.policy.models import GroupName, UserName
from proxy.policy.policy_file import PolicyError, parse_policy, unheld_names
from tests.fixtures.policy_samples import edit

NO_USERS = edit(
    """users:
  alice: {groups: [dev]}
  bob: {groups: [dba]}
  carol: {groups: [dba]}
""",
    "",
)
LEADS = edit("approvers: {groups: [dba]}", "approvers: {groups: [leads]}")


def test_users_may_be_left_out_and_every_group_come_from_the_provider() -> None:
    policy = parse_policy(NO_USERS, people_from_identity=True)
    assert policy.users == {}
    assert unheld_names(policy) == ({UserName("alice")}, {GroupName("dba")})
    with pytest.raises(PolicyError) as refused:
        parse_policy(NO_USERS)
    assert "users: required" in str(refused.value.problems[0])


def test_a_group_no_yaml_user_is_in_is_listed_not_refused() -> None:
    policy = parse_policy(LEADS, people_from_identity=True)
    assert unheld_names(policy) == (frozenset(), {GroupName("leads")})
    with pytest.raises(PolicyError) as refused:
        parse_policy(LEADS)
    assert any("no user is in group 'leads'" in str(p) for p in refused.value.problems)


def test_a_quorum_of_named_users_is_still_checked() -> None:
    text = edit("approvers: {groups: [dba]}", "approvers: {users: [dora, erin]}", NO_USERS)
    text = edit("required_approvals: 1", "required_approvals: 3", text)
    with pytest.raises(PolicyError) as refused:
        parse_policy(text, people_from_identity=True)
    assert any("the rule names only 2 user(s)" in str(p) for p in refused.value.problems)
    groups = edit("required_approvals: 1", "required_approvals: 3", LEADS)
    assert parse_policy(groups, people_from_identity=True)  # the provider says who is a lead


def test_policy_check_with_sso_accepts_and_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(LEADS)
    assert run_policy_check(argparse.Namespace(file=path, connect=False, sso=False)) == 1
    capsys.readouterr()
    assert run_policy_check(argparse.Namespace(file=path, connect=False, sso=True)) == 0
    warned = capsys.readouterr().err
    assert "warning: groups leads: in no user of users:" in warned
