"""The policy file: every problem found, reported together, with its path in the document."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.policy.models import (
    AccessLevelName,
    GroupName,
    SecretRef,
    TargetName,
    UpstreamTlsMode,
    UserName,
)
from proxy.policy.policy_file import PolicyError, PolicyUnreadable, load_policy, parse_policy
from tests.fixtures.examples import examples, stride
from tests.fixtures.policy_samples import ROW_42, VALID, BadPolicy, edit

REPO = Path(__file__).resolve().parents[3]
ORDERS, RO, RW = TargetName("orders"), AccessLevelName("read-only"), AccessLevelName("read-write")
RW_LEVEL = "{role: orders_rw, password_env: RW_PW, max_duration: 1h}"
AUTO_RULE = "{users: [alice], access_levels: [read-only], max_duration: 1h}"


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "test.yaml")
    return [str(problem) for problem in caught.value.problems]


def assert_reported(text: str, *expected: str) -> list[str]:
    """Every expected text appears in some problem line; returns the lines for more checks."""
    lines = problems_of(text)
    for wanted in expected:
        assert any(wanted in line for line in lines), f"{wanted!r} not in {lines}"
    return lines


def case(old: str, new: str, expected: str, name: str) -> object:
    return pytest.param(old, new, expected, id=name)


def test_the_valid_sample_becomes_typed_values() -> None:
    policy = parse_policy(VALID, "sample.yaml")
    orders = policy.targets[ORDERS]
    assert orders.upstream.tls is UpstreamTlsMode.PREFER
    assert orders.max_duration_for(RO) == timedelta(hours=4)
    assert orders.max_duration_for(RW) == timedelta(hours=1)
    assert orders.access_levels[RO].password == SecretRef(env="RO_PW")
    assert orders.approval.approver_groups == {GroupName("dba")}
    (auto,) = orders.approval.auto_approve
    assert auto.users == {UserName("alice")}
    assert auto.access_levels == {RO}
    assert policy.is_admin(UserName("bob"))
    assert policy.source == "sample.yaml"


def test_the_example_policy_is_valid() -> None:
    policy = load_policy(REPO / "config" / "policy.example.yaml")
    assert set(policy.targets) == {ORDERS}


def test_relative_secret_files_are_taken_from_the_policy_directory(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(edit("password_env: RW_PW", "password_file: secrets/rw"), encoding="utf-8")
    level = load_policy(path).targets[ORDERS].access_levels[RW]
    assert level.password == SecretRef(file=tmp_path / "secrets" / "rw")


@pytest.mark.parametrize("bad", ROW_42, ids=lambda bad: bad.name)
def test_each_bad_policy_of_row_42_is_rejected_with_its_message(bad: BadPolicy) -> None:
    assert_reported(bad.text, *bad.expected)


def test_an_inline_secret_is_never_echoed() -> None:
    text = edit("password_env: RO_PW", "password: hunter2")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert "hunter2" not in str(caught.value)


def test_a_missing_file_is_unreadable_not_invalid(tmp_path: Path) -> None:
    with pytest.raises(PolicyUnreadable, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


def test_all_problems_are_reported_at_once_in_line_order() -> None:
    text = edit("  bob: {groups: [dba]}", "  Bob Smith: {}")
    text = edit("port: 5432", "port: 70000", text)
    text = edit("RW_PW, max_duration: 1h}", "RW_PW, max_duration: 5h}", text)
    lines = assert_reported(
        text + "extra: true\n",
        "users.\"Bob Smith\": 'Bob Smith' is not a valid name",
        "targets.orders.upstream.port: must be from 1 to 65535, got 70000 (line 11)",
        "targets.orders.access_levels.read-write.max_duration: 5h is above the target's "
        "max_duration of 4h (line 21)",
        "extra: unknown key",
    )
    assert len(lines) == 4
    assert lines[0].startswith("users.")
    assert lines[-1].startswith("extra:")


ALICE = "  alice: {groups: [dev]}"
NAME_CASES = [
    case(ALICE, "  Alice Smith: {groups: [dev]}", "is not a valid name", "space"),
    case(ALICE, f"  {'a' * 64}: {{groups: [dev]}}", "longer than 63 bytes", "64-bytes"),
    case(ALICE, '  "al\\u0007ice": {groups: [dev]}', "is not a valid name", "control"),
    case(ALICE, "  réné: {groups: [dev]}", "is not a valid name", "non-ascii"),
    case("[dev]}", "[dev, 'a/b']}", "users.alice.groups[1]: 'a/b' is not a valid name", "group"),
    case("[dev]}", "[dev, dev]}", "users.alice.groups[1]: 'dev' is listed twice", "repeated"),
    case("  orders:", "  orders/prod:", "is not a valid name", "target"),
    case("      read-write:", "      read write:", "is not a valid name", "level"),
    case("{role: orders_rw,", "{role: '',", "read-write.role: must be 1 to 63 bytes", "no-role"),
    case("{role: orders_rw,", f"{{role: {'r' * 64},", "must be 1 to 63 bytes", "long-role"),
    case("database: orders", "database: ' orders'", "database: ' orders' has surrounding", "db"),
    case("host: 127.0.0.1", "host: 'db;rm'", "host: 'db;rm' is not a host name", "host"),
]


@pytest.mark.parametrize(("old", "new", "expected"), NAME_CASES)
def test_names_are_conservative_and_exact(old: str, new: str, expected: str) -> None:
    assert_reported(edit(old, new), expected)


def test_names_keep_their_case_and_allowed_punctuation() -> None:
    text = edit(ALICE, "  Alice.Smith@corp-1_x: {groups: [dev]}")
    policy = parse_policy(edit("users: [alice]", "users: [Alice.Smith@corp-1_x]", text))
    assert UserName("Alice.Smith@corp-1_x") in policy.users
    assert UserName("alice.smith@corp-1_x") not in policy.users


TLS_CHOICES = "upstream.tls: must be one of disable, prefer, require, verify-full"
VALUE_CASES = [
    case("port: 5432", "port: 0", "upstream.port: must be from 1 to 65535, got 0", "port-0"),
    case("port: 5432", "port: '5432'", "port: must be a whole number, got the text '5432'", "str"),
    case("port: 5432", "port: true", "port: must be a whole number, got true/false", "bool"),
    case("tls: prefer", "tls: verify_full", TLS_CHOICES, "tls"),
    case("tls: prefer", "tls: disable, ca_file: ca.pem", "ca_file: is only used with tls", "ca"),
    case("max_duration: 4h", "max_duration: 0s", "must be longer than zero", "zero"),
    case("max_duration: 4h", "max_duration: 240", "must be a duration, got a number", "bare"),
    case("max_duration: 4h", "max_duration: 1.5h", "orders.max_duration: is not a duration", "1.5"),
    case("max_duration: 4h", "max_duration: 31d", "longer than the maximum of 30d", "too-long"),
    case("pending_timeout: 1h", "pending_timeout: -1h", "must be positive", "negative"),
    case("version: 1", "version: 2", "version: unsupported version 2", "version"),
    case("version: 1\n", "", "version: required", "no-version"),
    case("description: Orders database", 'description: "a\\u202eb"', "control characters", "bidi"),
    case("approvals: 1", "approvals: yes", "must be a whole number, got the text 'yes'", "yes"),
    case("approval:\n", "approval:\n      require_reason: 'no'\n", "true or false", "reason"),
    case("  bob: {groups: [dba]}", "  bob:", "users.bob: has no value", "null-user"),
]


@pytest.mark.parametrize(("old", "new", "expected"), VALUE_CASES)
def test_values_are_checked(old: str, new: str, expected: str) -> None:
    assert_reported(edit(old, new), expected)


def test_a_section_of_the_wrong_type_is_reported() -> None:
    text = VALID[: VALID.index("targets:")] + "targets: []\n"
    assert_reported(text, "targets: must be a mapping (key: value lines), got a list")


DBA = "approvers: {groups: [dba]}"
ONE = "required_approvals: 1"
RO_AUTO = "access_levels: [read-only], max_duration: 1h}"
APPROVAL_CASES = [
    case(ONE, "required_approvals: 3", "3 approvals required but only 2 distinct", "too-many"),
    case(DBA, "approvers: {users: [zed], groups: [dba]}", "users: unknown user 'zed'", "user"),
    case(DBA, "approvers: {groups: [dba, sre]}", "no user is in group 'sre'", "empty-group"),
    case(DBA, "approvers: {}", "approvers: names no users or groups", "no-approvers"),
    case(ONE, "required_approvals: 0", "must be from 1 to 10, got 0", "zero-required"),
    case("{users: [alice], ", "{", "auto_approve[0]: names no users or groups", "auto-nobody"),
    case("{users: [alice], ", "{groups: [ops], ", "no user is in group 'ops'", "auto-group"),
    case(RO_AUTO, "access_levels: [], max_duration: 1h}", "names no access levels", "no-level"),
    case(RO_AUTO, "access_levels: [read-only]}", "auto_approve[0].max_duration: required", "max"),
    case(
        RO_AUTO,
        "access_levels: [read-only], max_duration: 5h}",
        "auto_approve[0].max_duration: 5h is above the maximum of level read-only (4h)",
        "auto-above-target-cap",
    ),
    case(
        RO_AUTO,
        "access_levels: [read-write], max_duration: 2h}",
        "auto_approve[0].max_duration: 2h is above the maximum of level read-write (1h)",
        "auto-above-level-cap",
    ),
    case(
        "RW_PW, max_duration: 1h}",
        "RW_PW, max_duration: 5h}",
        "read-write.max_duration: 5h is above the target's max_duration of 4h",
        "level-above-target",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), APPROVAL_CASES)
def test_approval_rules_must_be_satisfiable_and_name_what_exists(
    old: str, new: str, expected: str
) -> None:
    assert_reported(edit(old, new), expected)


def test_a_person_in_several_approver_places_counts_once() -> None:
    text = edit(f"{DBA}\n      {ONE}", "approvers: {users: [bob], groups: [dba]}\n      X")
    lines = assert_reported(text.replace("X", "required_approvals: 3"), "only 2 distinct user(s)")
    assert "(bob, carol)" in lines[0]


LEVEL_RULE = (
    "{role: orders_rw, password_env: RW_PW, max_duration: 1h,\n"
    "                   approval: {approvers: {users: [carol]}, auto_approve: [AUTO]}}"
)


def with_level_rule(auto: str, text: str = VALID) -> str:
    return edit(RW_LEVEL, LEVEL_RULE, text).replace("AUTO", auto)


def test_a_level_rule_replaces_the_target_rule_for_that_level() -> None:
    policy = parse_policy(with_level_rule("{users: [alice], max_duration: 30m}"))
    rule = policy.targets[ORDERS].approval_for(RW)
    assert rule.approver_users == {UserName("carol")}
    assert rule.auto_approve[0].access_levels == {RW}
    assert rule.require_reason


@pytest.mark.parametrize(
    ("auto", "expected"),
    [
        (
            "{users: [alice], max_duration: 2h}",
            "approval.auto_approve[0].max_duration: 2h is above",
        ),
        (AUTO_RULE, "access_levels: not used in a level's own approval"),
    ],
)
def test_a_level_rule_checks_its_auto_approve_rules(auto: str, expected: str) -> None:
    assert_reported(with_level_rule(auto), expected)


def test_a_target_rule_cannot_auto_approve_a_level_that_has_its_own_rule() -> None:
    text = edit(RO_AUTO, "access_levels: [read-write], max_duration: 1h}")
    text = with_level_rule("{users: [alice], max_duration: 1h}", text)
    assert_reported(text, "level 'read-write' has its own approval rule")


RO_SECRET = "password_env: RO_PW"
SECRET_CASES = [
    case(RO_SECRET, f"{RO_SECRET}, password_file: x", "give one of password_env or", "both"),
    case(f", {RO_SECRET}}}", "}", "read-only: needs a secret reference", "neither"),
    case(RO_SECRET, "password_env: 1-RO", "password_env: must be the name of an env", "bad-env"),
    case(RO_SECRET, "password_file: ''", "password_file: must be a file path", "empty-file"),
    case(
        "password_env: CONTROL_PW",
        "password: hunter2",
        "control.password: secrets are not allowed in the file",
        "control-inline",
    ),
    case("{role: pgw_control, ", "{", "control.role: required", "control-role"),
]


@pytest.mark.parametrize(("old", "new", "expected"), SECRET_CASES)
def test_secrets_are_references_to_exactly_one_place(old: str, new: str, expected: str) -> None:
    assert_reported(edit(old, new), expected)


def test_a_target_needs_at_least_one_level() -> None:
    text = VALID[: VALID.index("    access_levels:")] + "    access_levels: {}\n"
    assert_reported(text, "orders.access_levels: a target needs at least one access level")


def test_an_invalid_level_is_reported_once_not_again_by_the_rules_that_name_it() -> None:
    lines = problems_of(edit(f"{{role: orders_ro, {RO_SECRET}}}", "{role: orders_ro}"))
    assert lines == [
        "targets.orders.access_levels.read-only: needs a secret reference: use "
        "password_env: VARIABLE or password_file: PATH (line 20)"
    ]


def outcome(text: str) -> str:
    """ "valid" or "rejected"; any other exception escapes and fails the test."""
    try:
        parse_policy(text)
    except PolicyError as exc:
        return "rejected" if exc.problems else "rejected without saying why"
    return "valid"


def test_every_truncation_of_a_valid_file_is_rejected_or_valid_never_a_crash() -> None:
    # A half-written file can stop anywhere; whatever it holds, the outcome is a typed one.
    outcomes = {outcome(VALID[:cut]) for cut in range(0, len(VALID), stride())}
    assert outcomes == {"valid", "rejected"}


@settings(max_examples=examples(300), deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:-[]{}, \n'\"&*!#|>?1.")), max_size=60))
def test_arbitrary_text_is_a_policy_or_a_policy_error(text: str) -> None:
    assert outcome(text) in {"valid", "rejected"}


ODD_VALUES = ["", "~", "[]", "{}", "[1, [2]]", "{a: {b: c}}", "true", "-1", "1.5", "'x'"]
ODD_VALUES += ["2026-01-01", '"\\u0000"', "9" * 30, "'a b'", "[a, a]", "{password: x}"]


@settings(max_examples=examples(200), deadline=None)
@given(st.data())
def test_any_value_in_any_place_is_reported_not_crashed_on(data: st.DataObject) -> None:
    lines = VALID.splitlines(keepends=True)
    index = data.draw(st.integers(min_value=0, max_value=len(lines) - 1))
    value = data.draw(st.sampled_from(ODD_VALUES))
    key, colon, _ = lines[index].partition(":")
    lines[index] = f"{key}: {value}\n" if colon else lines[index]
    assert outcome("".join(lines)) in {"valid", "rejected"}
