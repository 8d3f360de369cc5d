"""Hot reload: a valid edit replaces the policy as a whole; anything else leaves it in force."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from proxy.policy.models import TargetName
from proxy.policy.policy_file import PolicyError
from proxy.policy.reload import PolicyHolder, ReloadOutcome, ReloadResult
from tests.fixtures.policy_samples import ROW_42, VALID, BadPolicy, edit

ORDERS = TargetName("orders")
EDITED = edit("max_duration: 4h", "max_duration: 3h")


def write(path: Path, text: str, *, mtime_ns: int | None = None) -> None:
    path.write_text(text, encoding="utf-8")
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    write(path, VALID, mtime_ns=1_000_000_000_000)
    return path


@pytest.fixture
def holder(policy_path: Path) -> PolicyHolder:
    return PolicyHolder.open(policy_path)


def test_a_server_never_starts_with_an_invalid_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    write(path, "version: 1\n")
    with pytest.raises(PolicyError, match="users: required"):
        PolicyHolder.open(path)


def test_an_unchanged_file_is_not_reread(holder: PolicyHolder) -> None:
    before = holder.current
    assert holder.check_for_changes() is None
    assert holder.check_for_changes() is None
    assert holder.current is before
    assert holder.counts == {}


def test_a_new_mtime_with_the_same_size_triggers_a_reload(
    holder: PolicyHolder, policy_path: Path
) -> None:
    same_size = edit("max_duration: 4h", "max_duration: 3h")
    assert len(same_size) == len(VALID)
    write(policy_path, same_size, mtime_ns=2_000_000_000_000)
    result = holder.check_for_changes()
    assert result == ReloadResult(ReloadOutcome.APPLIED, str(policy_path))
    assert holder.current.targets[ORDERS].max_duration.total_seconds() == 3 * 3600


def test_a_new_size_with_the_same_mtime_triggers_a_reload(
    holder: PolicyHolder, policy_path: Path
) -> None:
    write(policy_path, VALID + "# a comment\n", mtime_ns=1_000_000_000_000)
    result = holder.check_for_changes()
    assert result is not None
    assert result.applied


def test_an_editor_save_by_rename_triggers_a_reload(
    holder: PolicyHolder, policy_path: Path
) -> None:
    replacement = policy_path.with_suffix(".tmp")
    write(replacement, EDITED, mtime_ns=1_000_000_000_000)
    replacement.replace(policy_path)  # new inode, same size and mtime
    result = holder.check_for_changes()
    assert result is not None
    assert result.applied


def test_a_valid_edit_replaces_the_policy_as_one_snapshot(
    holder: PolicyHolder, policy_path: Path
) -> None:
    old = holder.current
    write(policy_path, EDITED, mtime_ns=2_000_000_000_000)
    assert holder.reload().applied
    new = holder.current
    assert new is not old
    assert old.targets[ORDERS].max_duration.total_seconds() == 4 * 3600  # untouched
    assert new.targets[ORDERS].max_duration.total_seconds() == 3 * 3600


@pytest.mark.parametrize("bad", ROW_42, ids=lambda bad: bad.name)
def test_a_bad_edit_of_row_42_keeps_the_old_policy_and_logs_why(
    holder: PolicyHolder,
    policy_path: Path,
    bad: BadPolicy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = holder.current
    write(policy_path, bad.text, mtime_ns=2_000_000_000_000)
    with caplog.at_level(logging.ERROR, logger="proxy.policy.reload"):
        result = holder.check_for_changes()
    assert result is not None
    assert result.outcome is ReloadOutcome.REJECTED
    lines = [str(problem) for problem in result.problems]
    for wanted in bad.expected:
        assert any(wanted in line for line in lines), f"{wanted!r} not in {lines}"
        assert wanted in caplog.text
    assert "keeping the policy in force" in caplog.text
    assert holder.current is before
    assert holder.counts == {ReloadOutcome.REJECTED: 1}


def test_a_rejected_file_is_not_reread_until_it_changes_again(
    holder: PolicyHolder, policy_path: Path
) -> None:
    write(policy_path, VALID[: len(VALID) // 2], mtime_ns=2_000_000_000_000)  # half-written
    first = holder.check_for_changes()
    assert first is not None
    assert first.outcome is ReloadOutcome.REJECTED
    assert holder.check_for_changes() is None  # no reread, no log line every second
    write(policy_path, EDITED, mtime_ns=3_000_000_000_000)  # the editor finishes the save
    finished = holder.check_for_changes()
    assert finished is not None
    assert finished.applied
    assert holder.counts == {ReloadOutcome.REJECTED: 1, ReloadOutcome.APPLIED: 1}


def test_a_deleted_file_keeps_the_old_policy(
    holder: PolicyHolder, policy_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = holder.current
    policy_path.unlink()
    with caplog.at_level(logging.WARNING, logger="proxy.policy.reload"):
        result = holder.check_for_changes()
    assert result is not None
    assert result.outcome is ReloadOutcome.UNREADABLE
    assert "No such file" in caplog.text
    assert holder.current is before
    assert holder.check_for_changes() is None  # reported once, not every second
    write(policy_path, EDITED)
    restored = holder.check_for_changes()
    assert restored is not None
    assert restored.applied


def test_sighup_rereads_even_when_the_file_looks_unchanged(holder: PolicyHolder) -> None:
    assert holder.reload().applied
    assert holder.counts == {ReloadOutcome.APPLIED: 1}


def test_the_reload_hook_sees_every_result(policy_path: Path) -> None:
    seen: list[ReloadOutcome] = []
    holder = PolicyHolder.open(policy_path, on_reload=lambda result: seen.append(result.outcome))
    write(policy_path, "version: [", mtime_ns=2_000_000_000_000)
    holder.check_for_changes()
    write(policy_path, EDITED, mtime_ns=3_000_000_000_000)
    holder.check_for_changes()
    assert seen == [ReloadOutcome.REJECTED, ReloadOutcome.APPLIED]


def test_a_failing_reload_hook_does_not_stop_reloads(
    policy_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(result: ReloadResult) -> None:
        raise RuntimeError("metrics are down")

    holder = PolicyHolder.open(policy_path, on_reload=broken)
    write(policy_path, EDITED, mtime_ns=2_000_000_000_000)
    with caplog.at_level(logging.ERROR, logger="proxy.policy.reload"):
        result = holder.check_for_changes()
    assert result is not None
    assert result.applied
    assert holder.current.targets[ORDERS].max_duration.total_seconds() == 3 * 3600
    assert "policy reload hook failed" in caplog.text
