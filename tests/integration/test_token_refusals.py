"""`pgwarden token create|list|revoke` on a host whose state cannot be used: exit 2, one line
naming the setting and the fix, no traceback, and no state file made by a command that failed.

The real command line, on a host laid out as the README's (`tests/fixtures/layout.py`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.layout import Layout, pgwarden, refused


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout.make(tmp_path)


def token(layout: Layout, *args: str) -> list[str]:
    return ["token", *args, "--config", str(layout.config)]


def test_create_with_the_state_directory_missing_names_it_and_creates_nothing(
    layout: Layout,
) -> None:
    (layout.root / "state").rmdir()
    (line,) = refused(layout, token(layout, "create", "alice"), "paths.state: the directory")
    assert f"mkdir -p {layout.state.parent}" in line


def test_create_with_the_policy_missing_makes_no_state_file(layout: Layout) -> None:
    layout.policy.unlink()
    refused(layout, token(layout, "create", "alice"), f"paths.policy: cannot read {layout.policy}")


def test_create_for_someone_not_in_the_policy_is_refused_before_the_state_is_made(
    layout: Layout,
) -> None:
    refused(layout, token(layout, "create", "mallory"), "'mallory' is not a user", status=1)


def test_list_and_revoke_before_any_token_exists_make_no_state_file(layout: Layout) -> None:
    refused(layout, token(layout, "list"), f"paths.state: {layout.state} does not exist yet")
    refused(layout, token(layout, "revoke", "tok_x"), f"paths.state: {layout.state} does not")


def test_an_unreadable_config_names_both_ways_to_give_it(layout: Layout) -> None:
    layout.config.unlink()
    (line,) = refused(layout, token(layout, "list"), f"cannot read {layout.config}")
    assert line.endswith("--config or PGWARDEN_CONFIG")


def test_create_needs_the_audit_key_and_then_makes_the_state_file(layout: Layout) -> None:
    # A token is recorded in the audit log before it is made: without the key, nothing is made.
    result = pgwarden(*token(layout, "create", "alice"), key=None)
    assert result.returncode == 2
    assert "audit.hmac_key_env" in result.stderr
    assert not layout.state.exists()
    # The control for the tests above.
    result = pgwarden(*token(layout, "create", "alice"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pgw_")
    assert layout.state.exists()
    listed = pgwarden(*token(layout, "list"), key=None)
    assert "alice" in listed.stdout
