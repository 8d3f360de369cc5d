"""Audit chains of several worker processes (`proxy.workers`): each verifies as its own, a chain
put in another worker's place fails, and `verify --config` requires the chain of every worker the
primary's log says it started, so deleting one (with its head) does not go unnoticed."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.audit.events import WorkerStarted
from proxy.audit.records import head_path, log_files, worker_audit_path
from proxy.audit.verify import verify, worker_of
from tests.unit.audit.helpers import KEY, VerifyCommand, build_log, event, open_log


def server(tmp_path: Path, workers: int) -> Path:
    """The logs a server with `workers` processes leaves, and its config; returns the config."""
    primary = tmp_path / "audit.jsonl"
    log = open_log(primary)
    for worker in range(1, workers):
        log.append(WorkerStarted(worker, 1000 + worker, f"audit.worker{worker}.jsonl"))
        build_log(worker_audit_path(primary, worker), 5)
    log.append(event())
    log.close()
    config = tmp_path / "pgwarden.yaml"
    config.write_text(
        "paths:\n  policy: policy.yaml\n  state: state.db\n  audit_log: audit.jsonl\n"
        "audit:\n  hmac_key_env: AUDIT_KEY\n"
    )
    return config


VerifyConfig = Callable[[Path], tuple[int, str, str]]


@pytest.fixture
def verify_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> VerifyConfig:
    """`pgwarden audit verify --config CONFIG`: its exit status, stdout and stderr."""
    command = VerifyCommand(capsys, monkeypatch)
    return lambda config: command("--config", config, env={"AUDIT_KEY": KEY.decode()})


@pytest.mark.parametrize(
    ("name", "worker"),
    [("audit.jsonl", 0), ("audit.worker1.jsonl", 1), ("audit.worker12.jsonl", 12),
     ("audit.worker3", 3), ("audit.worker1.jsonl.00000000000000000042", 1),
     ("audit.workers.jsonl", 0), ("audit.worker0.jsonl", 0)],
)  # fmt: skip
def test_the_worker_of_a_file_is_read_from_its_name(name: str, worker: int) -> None:
    assert worker_of(name) == worker


def test_every_chain_verifies_and_each_gets_its_line(
    tmp_path: Path, verify_config: VerifyConfig
) -> None:
    code, out, err = verify_config(server(tmp_path, 3))
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split(": ok:")[0] for line in lines] == [
        str(tmp_path / name)
        for name in ("audit.jsonl", "audit.worker1.jsonl", "audit.worker2.jsonl")
    ]
    assert verify(tmp_path / "audit.jsonl", KEY).workers_started == {1, 2}


def test_one_process_prints_one_line_as_before(tmp_path: Path, verify_config: VerifyConfig) -> None:
    code, out, _ = verify_config(server(tmp_path, 1))
    assert code == 0
    assert out.startswith("ok: ")


def test_a_deleted_worker_chain_fails_though_nothing_else_was_touched(
    tmp_path: Path, verify_config: VerifyConfig
) -> None:
    config = server(tmp_path, 3)
    chain = tmp_path / "audit.worker2.jsonl"
    for file in [*log_files(chain), head_path(chain)]:
        file.unlink()
    code, out, err = verify_config(config)
    assert code == 1
    assert f"{chain}: FAILED: missing, though audit.jsonl records that worker 2 was started" in err
    assert f"{tmp_path / 'audit.worker1.jsonl'}: ok:" in out


def test_a_chain_put_in_another_workers_place_fails(
    tmp_path: Path, verify_config: VerifyConfig
) -> None:
    config = server(tmp_path, 3)
    one, two = tmp_path / "audit.worker1.jsonl", tmp_path / "audit.worker2.jsonl"
    for file in [*log_files(one), head_path(one)]:
        file.unlink()
    for file in [*log_files(two), head_path(two)]:  # worker 2's chain, as worker 1's
        shutil.copy(file, file.with_name(file.name.replace("worker2", "worker1")))
    code, _, err = verify_config(config)
    assert code == 1
    assert "this chain was opened as audit.worker2.jsonl, a file of worker 2, not 1" in err


def test_the_primarys_chain_cannot_stand_in_for_a_worker(tmp_path: Path) -> None:
    primary = tmp_path / "audit.jsonl"
    build_log(primary, 5)
    moved = tmp_path / "audit.worker1.jsonl"
    for file in [*log_files(primary), head_path(primary)]:
        shutil.copy(file, file.with_name(file.name.replace("audit.jsonl", moved.name)))
    report = verify(moved, KEY)
    assert not report.ok
    assert "opened as audit.jsonl, a file of worker 0, not 1" in report.summary()
