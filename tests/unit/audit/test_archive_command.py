"""`pgwarden audit archive`: one line per chain, every worker's chain archived with `--config`,
the workers the archived records started still required by `audit verify --config`, and the
exit statuses of `audit verify` (0 done, 1 a chain that does not verify, 2 cannot be done)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.audit.archive import anchor_path
from proxy.audit.events import WorkerStarted
from proxy.audit.records import head_path, log_files, worker_audit_path
from proxy.cli import main
from tests.unit.audit.archive_helpers import ROTATING, rotated_log
from tests.unit.audit.helpers import KEY, event, lines_of, open_log, write_lines

CONFIG = """\
paths: {policy: policy.yaml, state: state.db, audit_log: audit.jsonl}
audit: {hmac_key_env: AUDIT_KEY}
"""


class Pgwarden:
    """`pgwarden audit ...` in this process: exit status, stdout, stderr."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *args: str | Path) -> tuple[int, str, str]:
        self._capsys.readouterr()
        try:
            code = main(["audit", *map(str, args)])
        except SystemExit as exc:  # a usage error
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = self._capsys.readouterr()
        return code, out, err


@pytest.fixture
def pgwarden(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Pgwarden:
    monkeypatch.setenv("AUDIT_KEY", KEY.decode())
    return Pgwarden(capsys)


@pytest.fixture
def server(tmp_path: Path) -> Path:
    """A server with three processes whose logs rotated; its `worker.started` records are in the
    primary's first file. Returns the config."""
    primary = tmp_path / "audit.jsonl"
    log = open_log(primary, options=ROTATING)
    log.append_many([WorkerStarted(k, 1000 + k, f"audit.worker{k}.jsonl") for k in (1, 2)])
    for n in range(40):
        log.append(event(n))
        log.flush()
    log.close()
    for worker in (1, 2):
        rotated_log(worker_audit_path(primary, worker), 30)
    config = tmp_path / "pgwarden.yaml"
    config.write_text(CONFIG)
    return config


def test_every_chain_is_archived_and_verifies_alone_and_with_the_archive(
    server: Path, tmp_path: Path, pgwarden: Pgwarden
) -> None:
    vault = tmp_path / "vault"
    code, out, err = pgwarden("archive", "--config", server, "--to", vault, "--keep", "0")
    assert code == 0, err
    lines = out.splitlines()
    chains = ("audit.jsonl", "audit.worker1.jsonl", "audit.worker2.jsonl")
    assert [line.split(": ")[0] for line in lines] == [str(tmp_path / name) for name in chains]
    assert "archived 3 file(s), records 1-" in lines[0]
    assert lines[0].endswith("the log continues from audit.jsonl.anchor (0 rotated file(s) kept)")
    for chain in chains:
        assert log_files(tmp_path / chain) == [tmp_path / chain]
    code, out, err = pgwarden("verify", "--config", server)
    assert code == 0, err
    assert out.count("after the records archived up to seq") == 3
    code, out, err = pgwarden("verify", "--config", server, "--archive", vault)
    assert code == 0, err
    assert out.count(" archived), head seq ") == 3


def test_a_deleted_worker_chain_fails_after_its_start_was_archived(
    server: Path, tmp_path: Path, pgwarden: Pgwarden
) -> None:
    pgwarden("archive", "--config", server, "--to", tmp_path / "vault", "--keep", "0")
    chain = tmp_path / "audit.worker2.jsonl"
    for file in [*log_files(chain), head_path(chain), anchor_path(chain)]:
        file.unlink()
    code, _, err = pgwarden("verify", "--config", server)
    assert code == 1
    assert f"{chain}: FAILED: missing, though audit.jsonl records that worker 2 was started" in err


def test_nothing_to_archive_is_said_and_exits_0(tmp_path: Path, pgwarden: Pgwarden) -> None:
    path = rotated_log(tmp_path / "audit.jsonl")
    args = ("archive", path, "--key-env", "AUDIT_KEY", "--to", tmp_path / "vault")
    code, out, _ = pgwarden(*args, "--keep", "9")
    assert (code, out) == (0, f"{path}: nothing to archive (4 rotated file(s) kept)\n")
    code, out, _ = pgwarden(*args, "--before", "2020-01-01")
    assert (code, out) == (0, f"{path}: nothing to archive (4 rotated file(s) kept)\n")
    code, out, _ = pgwarden(*args, "--before", "2030-01-01T00:00:00+02:00", "--keep", "1")
    assert code == 0
    assert "archived 3 file(s), records 1-42" in out


def test_a_chain_that_does_not_verify_exits_1(tmp_path: Path, pgwarden: Pgwarden) -> None:
    path = rotated_log(tmp_path / "audit.jsonl")
    file = log_files(path)[0]
    write_lines(file, lines_of(file)[1:])
    code, out, err = pgwarden("archive", path, "--key-env", "AUDIT_KEY", "--to",
                              tmp_path / "vault", "--keep", "0")  # fmt: skip
    assert (code, out) == (1, "")
    assert err.startswith(f"FAILED: {path} does not verify, so it is not archived: ")


@pytest.mark.parametrize(
    ("extra", "message"),
    [((), "say which files to archive: --keep N (rotated files to keep) or --before DATE"),
     (("--keep", "-1"), "not a count of files: '-1'"),
     (("--before", "yesterday"), "not a date: 'yesterday'")],
)  # fmt: skip
def test_usage_errors_exit_2(
    tmp_path: Path, pgwarden: Pgwarden, extra: tuple[str, ...], message: str
) -> None:
    path = rotated_log(tmp_path / "audit.jsonl")
    code, out, err = pgwarden("archive", path, "--key-env", "AUDIT_KEY", "--to", tmp_path, *extra)
    assert (code, out) == (2, "")
    assert message in err


def test_a_destination_that_cannot_be_used_exits_2(tmp_path: Path, pgwarden: Pgwarden) -> None:
    path = rotated_log(tmp_path / "log" / "audit.jsonl")
    code, _, err = pgwarden("archive", path, "--key-env", "AUDIT_KEY", "--to", path.parent,
                            "--keep", "0")  # fmt: skip
    assert code == 2
    assert f"pgwarden: {path}: {path.parent} is the log's own directory: archive elsewhere" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = pgwarden("archive", path, "--key-env", "AUDIT_KEY", "--to", blocker / "vault",
                            "--keep", "0")  # fmt: skip
    assert code == 2
    assert err.startswith(f"pgwarden: {path}: ")
    assert len(log_files(path)) == 5
