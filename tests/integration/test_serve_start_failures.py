"""`pgwarden serve` that cannot start: exit 2, one line per problem naming the setting and the
fix, no traceback, and nothing created (no directory, no state file, no audit record).

Each test runs the real process (`python -m proxy serve --config ...`) on a deployment laid out
as the README's (`tests/fixtures/layout.py`). No database is needed: the server connects
upstream only when a client logs in.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.audit.records import MIN_KEY_BYTES
from tests.fixtures.layout import GOOD_KEY, KEY_ENV, TIMEOUT, Layout
from tests.fixtures.layout import refused as refused_by
from tests.fixtures.policy_samples import VALID
from tests.unit.audit.helpers import records

LISTENING = re.compile(r"pgwarden API listening on 127\.0\.0\.1:(\d+)")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout.make(tmp_path)


def refused(
    layout: Layout, *expected: str, key: str | None = GOOD_KEY, extra: tuple[str, ...] = ()
) -> list[str]:
    args = ["serve", "--config", str(layout.config), *extra]
    return refused_by(layout, args, *expected, key=key)


@pytest.fixture
def occupied() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        yield int(holder.getsockname()[1])


def test_a_missing_audit_key_names_the_variable_and_how_to_make_one(layout: Layout) -> None:
    (line,) = refused(layout, f"audit.hmac_key_env: environment variable {KEY_ENV} is not set",
                      key=None)  # fmt: skip
    assert f'export {KEY_ENV}="$(openssl rand -hex 32)"' in line


def test_an_empty_audit_key_is_refused(layout: Layout) -> None:
    refused(layout, f"audit.hmac_key_env: environment variable {KEY_ENV} is empty", key="")


def test_a_too_short_audit_key_says_how_long_it_must_be(layout: Layout) -> None:
    (line,) = refused(layout, "audit.hmac_key_env: environment variable", key="short")
    assert f"holds 5 bytes, fewer than the {MIN_KEY_BYTES} an HMAC key needs" in line
    assert "short" not in line.replace("holds 5 bytes", "")  # the key itself is never shown


def test_an_unreadable_audit_key_file_is_named(layout: Layout) -> None:
    missing = layout.root / "etc" / "audit.key"
    layout.write_config(audit=f"hmac_key_file: {missing}")
    (line,) = refused(layout, f"audit.hmac_key_file: cannot read {missing}")
    assert f"openssl rand -hex 32 > {missing}" in line


def test_a_missing_state_directory_is_named_and_not_created(layout: Layout) -> None:
    (layout.root / "state").rmdir()
    (line,) = refused(layout, f"paths.state: the directory {layout.state.parent} does not exist")
    assert f"mkdir -p {layout.state.parent}" in line


def test_a_missing_audit_log_directory_is_named_and_not_created(layout: Layout) -> None:
    (layout.root / "log").rmdir()
    refused(layout, f"paths.audit_log: the directory {layout.audit_log.parent} does not exist")


def test_a_state_path_that_is_a_directory_is_refused(layout: Layout) -> None:
    layout.state.mkdir()
    refused(layout, f"paths.state: {layout.state} is a directory")


def test_every_problem_is_reported_at_once_one_line_each(layout: Layout) -> None:
    (layout.root / "state").rmdir()
    (layout.root / "log").rmdir()
    refused(layout, "audit.hmac_key_env:", "paths.state:", "paths.audit_log:", key=None)


def test_an_unreadable_config_file_is_named(layout: Layout) -> None:
    layout.config.unlink()
    (line,) = refused(layout, f"cannot read {layout.config}: No such file or directory")
    assert "--config" in line


def test_an_invalid_config_names_the_setting_and_the_check_command(layout: Layout) -> None:
    layout.write_config(extra=", workers: many")
    (line,) = refused(layout, f"{layout.config}: proxy.workers: must be a whole number")
    assert line.endswith(f"see: pgwarden config check {layout.config}")


def test_a_missing_policy_file_is_named_with_the_setting(layout: Layout) -> None:
    policy = layout.policy
    policy.unlink()
    (line,) = refused(layout, f"paths.policy: cannot read {policy}: No such file or directory")
    assert f"correct paths.policy in {layout.config}" in line


def test_an_invalid_policy_names_the_policy_check_command(layout: Layout) -> None:
    policy = layout.policy
    policy.write_text(VALID.replace("pending_timeout: 1h", "pending_timeout: soon"))
    (line,) = refused(layout, f"paths.policy: {policy}: pending_timeout:")
    assert line.endswith(f"see: pgwarden policy check {policy}")


def test_a_missing_tls_certificate_is_named(layout: Layout) -> None:
    cert, key = layout.root / "etc" / "server.crt", layout.root / "etc" / "server.key"
    layout.write_config(extra=f", tls: {{cert_file: {cert}, key_file: {key}}}")
    (line,) = refused(layout, "proxy.tls:")
    assert str(cert) in line


def test_a_proxy_port_in_use_is_named_and_nothing_is_created(layout: Layout, occupied: int) -> None:
    layout.write_config(proxy=f"127.0.0.1:{occupied}")
    refused(layout, f"proxy.listen: 127.0.0.1:{occupied} is already in use by another process")


def test_an_api_port_in_use_is_named_and_nothing_is_created(layout: Layout, occupied: int) -> None:
    layout.write_config(api=f"127.0.0.1:{occupied}")
    refused(layout, f"api.listen: 127.0.0.1:{occupied} is already in use by another process")


def test_an_audit_log_of_another_key_is_left_as_it_was(layout: Layout) -> None:
    assert serve_until_listening(layout.config) == 0
    layout.state.unlink()  # so that the refused start below could only have made it anew
    log = layout.audit_log.read_bytes()
    (line,) = refused(layout, "paths.audit_log: cannot continue the audit log", key="x" * 64,
                      extra=("--new-state",))  # fmt: skip
    assert "is this the right key?" in line
    assert layout.audit_log.read_bytes() == log


def test_a_lost_state_file_beside_an_audit_log_is_refused_naming_both(layout: Layout) -> None:
    assert serve_until_listening(layout.config) == 0
    layout.state.unlink()  # deleted, or a volume that did not mount: its grants and tokens gone
    lost = f"{layout.state} does not exist, but the audit log {layout.audit_log} shows that"
    (line,) = refused(layout, f"paths.state: {lost} pgwarden ran here before")
    assert "would forget every grant and API token" in line
    assert line.endswith(f"pgwarden serve --config {layout.config} --new-state")
    # `token create` would make the same empty store: it refuses with the same line.
    assert refused_by(layout, ["token", "create", "alice", "--config", str(layout.config)],
                      "paths.state:") == [line]  # fmt: skip


def test_new_state_starts_anew_once_and_the_audit_log_says_so(layout: Layout) -> None:
    assert serve_until_listening(layout.config) == 0
    layout.state.unlink()
    assert serve_until_listening(layout.config, "--new-state") == 0
    created = [r for r in records(layout.audit_log) if r["kind"] == "state.created"]
    assert [(r["file"], r["earlier_life"]) for r in created] == [
        (str(layout.state), False),  # the first start
        (str(layout.state), True),  # the new one, given up the earlier
    ]
    # A one-time decision: with the new file there, the flag is refused (not ignored).
    (line,) = refused(layout, f"paths.state: {layout.state} exists, and --new-state",
                      extra=("--new-state",))  # fmt: skip
    assert line.endswith("start without --new-state to use it")
    assert serve_until_listening(layout.config) == 0


def test_the_same_deployment_starts_once_its_problems_are_fixed(layout: Layout) -> None:
    # The control for the tests above: nothing in the layout itself stops a start.
    assert serve_until_listening(layout.config) == 0
    assert layout.state.exists()
    assert '"kind":"audit.opened"' in layout.audit_log.read_text()


def serve_until_listening(config: Path, *extra: str) -> int:
    """Start serve, wait for the API's listening line, SIGTERM it; its exit status."""
    env = {**os.environ, KEY_ENV: GOOD_KEY}
    with subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config), *extra],
        stderr=subprocess.PIPE, text=True, env=env,
    ) as process:  # fmt: skip
        assert process.stderr is not None
        try:
            # The process ends its stderr if it dies; pytest-timeout bounds a silent hang.
            for line in process.stderr:
                if LISTENING.search(line):
                    break
            process.send_signal(signal.SIGTERM)
            process.stderr.read()  # what it logs while stopping
            return process.wait(TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
