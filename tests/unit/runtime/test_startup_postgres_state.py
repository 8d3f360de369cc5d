"""Starting with `state.backend: postgres`: the DSN is checked with everything else, the SQLite
file's checks do not apply (no file to create or lose: `--new-state` is refused as meaningless),
and a database that cannot be reached is one line naming it, never its password.

No database is needed: every case here is refused before one would answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.runtime.startup import (
    NEW_STATE_IN_POSTGRES,
    StartupError,
    check_startup,
    earlier_life,
    open_state_store,
)
from tests.fixtures.layout import GOOD_KEY, KEY_ENV, Layout
from tests.fixtures.postgres import free_loopback_port

DSN_ENV = "PGWARDEN_TEST_STARTUP_STATE_DSN"


def postgres_layout(tmp_path: Path) -> Layout:
    layout = Layout.make(tmp_path)
    text = layout.config.read_text().replace(f"state: {layout.state}, ", "")
    layout.config.write_text(text + f"state: {{backend: postgres, dsn_env: {DSN_ENV}}}\n")
    (layout.audit_log.parent / "audit.jsonl").write_text("")  # an earlier life, for SQLite
    return layout


def problems(layout: Layout, *, new_state: bool = False) -> tuple[str, ...]:
    config = load_config(layout.config)
    with pytest.raises(StartupError) as refused:
        check_startup(config, layout.audit_log, lambda result: None, listen=True,
                      new_state=new_state)  # fmt: skip
    return refused.value.problems


def test_a_missing_dsn_is_a_startup_problem_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, GOOD_KEY)
    monkeypatch.delenv(DSN_ENV, raising=False)
    assert problems(postgres_layout(tmp_path)) == (
        f"state.dsn_env: environment variable {DSN_ENV} is not set; set it to the state "
        "database's libpq connection string, e.g. "
        "postgresql://pgwarden@db.internal/pgwarden?sslmode=verify-full",
    )


def test_new_state_is_refused_and_no_state_file_is_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, GOOD_KEY)
    monkeypatch.setenv(DSN_ENV, "host=127.0.0.1")
    layout = postgres_layout(tmp_path)
    assert problems(layout, new_state=True) == (NEW_STATE_IN_POSTGRES,)
    config = load_config(layout.config)
    assert not earlier_life(config)  # an audit log without a state file says nothing here
    check_startup(config, layout.audit_log, lambda result: None, listen=True)


def test_an_unreachable_database_is_one_line_naming_it_without_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_loopback_port()
    monkeypatch.setenv(DSN_ENV, f"postgresql://warden:s3cret@127.0.0.1:{port}/state")
    with pytest.raises(StartupError) as refused:
        open_state_store(load_config(postgres_layout(tmp_path).config))
    (line,) = refused.value.problems
    assert line.startswith(
        f"state: cannot open the state store postgresql://127.0.0.1:{port}/state "
        "(schema pgwarden): connection failed"
    )
    assert "s3cret" not in line
