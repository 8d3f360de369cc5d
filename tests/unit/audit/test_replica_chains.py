"""Audit chains of replicas (a PostgreSQL state store): their names, and verifying them together.

Each replica's chains carry its name (`audit.a.jsonl`, `audit.a.worker1.jsonl`,
`audit.a.commands.jsonl`); the names of a SQLite server's chains do not change. No two chains,
nor a chain and another's side file, share a name; a chain found in a directory is read back to
its replica and process. `pgwarden audit verify` of replicas' chains gives each line its
replica, names the replicas the registry knows that have no chain (a `--allow-missing` one is
excused), and says when it cannot know which are expected. The registry itself is read in
tests/integration/replicas/test_audit_chains.py; here it is given as rows.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.audit.events import WorkerStarted
from proxy.audit.records import (
    Chain,
    chain_of,
    chains_beside,
    commands_audit_path,
    head_path,
    log_files,
    worker_audit_path,
)
from proxy.audit.verify import verify
from proxy.cli import main
from proxy.cluster.replicas_seen import ReplicaSeen
from proxy.commands.audit_replicas import Expected, verify_replicas
from proxy.config import replica_name_problem
from proxy.policy.fields import check_name
from tests.unit.audit.archive_helpers import rotated_log
from tests.unit.audit.helpers import (
    KEY,
    VerifyCommand,
    build_log,
    event,
    lines_of,
    open_log,
    write_lines,
)

T0 = datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC)
T1 = datetime(2026, 12, 7, 1, 5, 0, tzinfo=UTC)
SIDE_SUFFIXES = (".head", ".anchor", ".anchor.000000000007", ".000000000001", ".lock", ".tmp")


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replica", "worker", "name"),
    [("", 0, "audit.jsonl"), ("", 2, "audit.worker2.jsonl"), ("a", 0, "audit.a.jsonl"),
     ("a", 1, "audit.a.worker1.jsonl"), ("db1.eu", 3, "audit.db1.eu.worker3.jsonl")],
)  # fmt: skip
def test_a_replicas_chains_carry_its_name_and_a_sqlite_servers_keep_theirs(
    replica: str, worker: int, name: str
) -> None:
    log = Path("/var/log/pgwarden/audit.jsonl")
    assert worker_audit_path(log, worker, replica) == log.with_name(name)
    assert worker_audit_path(log, worker) == log.with_name(
        "audit.jsonl" if worker == 0 else f"audit.worker{worker}.jsonl"
    )


def test_the_token_commands_chain_is_the_replicas_too() -> None:
    log = Path("/var/log/pgwarden/audit.jsonl")
    assert commands_audit_path(log).name == "audit.commands.jsonl"
    assert commands_audit_path(log, "a").name == "audit.a.commands.jsonl"


@pytest.mark.parametrize(
    "replica", ["x.worker1", "worker2", "commands", "x.commands", "a.head", "a.7", "anchor"]
)
def test_a_name_that_would_take_another_files_name_is_refused(replica: str) -> None:
    problem = replica_name_problem(replica)
    assert problem is not None
    assert "choose another name" in problem


@pytest.mark.parametrize("replica", ["a", "db1.eu", "pgw-2", "node_7", "worker", "commands-a"])
def test_ordinary_names_are_fine(replica: str) -> None:
    assert replica_name_problem(replica) is None


replica_names = st.text("abw0123456789.-_@korcmdsheln", min_size=1, max_size=20).filter(
    lambda name: check_name(name) is None and replica_name_problem(name) is None
)
chains = st.builds(
    Chain, st.one_of(st.just(""), replica_names), st.booleans(), st.integers(0, 40)
).filter(lambda chain: not (chain.commands and chain.worker))
logs = st.sampled_from(["audit.jsonl", "audit", "pgw.audit.jsonl", "a.jsonl", "audit.log"])


@given(chains, chains, logs)
def test_no_two_chains_share_a_file_and_each_reads_back(one: Chain, two: Chain, log: str) -> None:
    audit_log = Path("/logs") / log
    first, second = one.path(audit_log).name, two.path(audit_log).name
    assert chain_of(audit_log, first) == one
    assert (first == second) == (one == two)
    for suffix in SIDE_SUFFIXES:  # no chain is another's head, anchor, archive or lock
        assert second != first + suffix
        assert chain_of(audit_log, first + suffix) is None


def test_what_is_found_in_a_directory_is_every_chain_in_order(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    names = ("audit.b.jsonl", "audit.a.worker1.jsonl", "audit.a.jsonl", "audit.jsonl",
             "audit.a.commands.jsonl", "audit.a.jsonl.head", "audit.a.jsonl.000000000001",
             "audit.c.jsonl.head", "serve.log", "auditx.jsonl", "audit.jsonl.lock")  # fmt: skip
    for name in names:
        (tmp_path / name).touch()
    assert chains_beside(log) == [
        Chain("", False, 0), Chain("a", False, 0), Chain("a", False, 1), Chain("a", True, 0),
        Chain("b", False, 0), Chain("c", False, 0),  # c: by its head, its log is gone
    ]  # fmt: skip


# -- one chain in another's place --------------------------------------------------------------


def test_one_replicas_chain_cannot_stand_in_for_anothers(tmp_path: Path) -> None:
    build_log(tmp_path / "audit.b.jsonl", 5)
    a = tmp_path / "audit.a.jsonl"
    for file in [*log_files(tmp_path / "audit.b.jsonl"), head_path(tmp_path / "audit.b.jsonl")]:
        shutil.copy(file, file.with_name(file.name.replace("audit.b.jsonl", a.name)))
    assert verify(a, KEY).ok  # same key, same worker: only the name it was opened as tells
    report = verify(a, KEY, opened_as=a.name)
    assert not report.ok
    assert "this chain was opened as audit.b.jsonl, not audit.a.jsonl" in report.summary()


# -- verifying replicas' chains together -------------------------------------------------------


def replicas_dir(tmp_path: Path, *names: str) -> Path:
    """Chains of replicas `names` (a with a worker) in one directory; returns the base path."""
    base = tmp_path / "audit.jsonl"
    for name in names:
        log = open_log(worker_audit_path(base, 0, name))
        if name == "a":
            log.append(WorkerStarted(1, 4242, "audit.a.worker1.jsonl"))
            build_log(worker_audit_path(base, 1, name), 3)
        log.append(event())
        log.close()
    return base


def seen(*names: str) -> Expected:
    rows = tuple(ReplicaSeen(name, T0, T1, T1 if name == "c" else None) for name in names)
    return Expected(rows, "postgresql://db:5432/pgwarden (schema pgwarden)")


def test_every_replicas_chains_verify_each_under_its_name(tmp_path: Path) -> None:
    base = replicas_dir(tmp_path, "a", "b")
    lines = verify_replicas(base, KEY, [], seen("a", "b"))
    assert [status for status, _ in lines] == [0, 0, 0, 0]
    texts = [text for _, text in lines]
    assert texts[0].startswith(f"replica a: {tmp_path / 'audit.a.jsonl'}: ok: ")
    assert texts[1].startswith(f"replica a: {tmp_path / 'audit.a.worker1.jsonl'}: ok: ")
    assert texts[2].startswith(f"replica b: {tmp_path / 'audit.b.jsonl'}: ok: ")
    assert texts[3] == (
        "registry: replicas a, b in postgresql://db:5432/pgwarden (schema pgwarden); each has "
        "its chain here"
    )


def test_a_registered_replica_without_a_chain_is_named_and_fails(tmp_path: Path) -> None:
    base = replicas_dir(tmp_path, "a", "b")
    lines = verify_replicas(base, KEY, [], seen("a", "b", "c"))
    assert (1, f"replica c: FAILED: no audit chain found in {tmp_path} (started 2026-12-07 "
               "01:02:03 UTC, last seen 2026-12-07 01:05:00 UTC, stopped 2026-12-07 01:05:00 "
               "UTC)") in lines  # fmt: skip
    assert lines[-1][1].endswith("; missing: c")
    allowed = verify_replicas(base, KEY, [], seen("a", "b", "c"), allow_missing=["c"])
    assert max(status for status, _ in allowed) == 0
    assert any("replica c: no audit chain found" in t and "allowed by --allow-missing" in t
               for _, t in allowed)  # fmt: skip


def test_tampering_with_one_replicas_chain_is_named_with_its_replica(tmp_path: Path) -> None:
    base = replicas_dir(tmp_path, "a", "b")
    chain = tmp_path / "audit.b.jsonl"
    lines = lines_of(chain)
    write_lines(chain, [*lines[:1], *lines[2:]])  # a deleted record
    result = verify_replicas(base, KEY, [], seen("a", "b"))
    failed = [text for status, text in result if status == 1]
    assert len(failed) == 1
    assert failed[0].startswith(f"replica b: {chain}: FAILED: audit.b.jsonl:2: seq 3: ")


def test_a_replicas_deleted_worker_chain_fails(tmp_path: Path) -> None:
    base = replicas_dir(tmp_path, "a")
    worker = tmp_path / "audit.a.worker1.jsonl"
    for file in [*log_files(worker), head_path(worker)]:
        file.unlink()
    lines = verify_replicas(base, KEY, [], seen("a"))
    assert (1, f"replica a: {worker}: FAILED: missing, though audit.a.jsonl records that worker 1 "
               "was started") in lines  # fmt: skip


def test_a_chain_left_with_only_its_head_is_missing(tmp_path: Path) -> None:
    base = replicas_dir(tmp_path, "a", "b")
    for file in log_files(tmp_path / "audit.b.jsonl"):
        file.unlink()
    lines = verify_replicas(base, KEY, [], seen("a", "b"))
    assert (1, f"replica b: {tmp_path / 'audit.b.jsonl'}: FAILED: missing, though its head or "
               "anchor is here") in lines  # fmt: skip


def test_a_directory_without_chains_is_unreadable_and_every_replica_missing(
    tmp_path: Path,
) -> None:
    lines = verify_replicas(tmp_path / "audit.jsonl", KEY, [], seen("a"))
    assert lines[0] == (2, f"pgwarden: no audit chain at {tmp_path}/audit.*.jsonl")
    assert lines[1][0] == 1
    assert lines[1][1].startswith("replica a: FAILED: no audit chain found in")


def test_a_chain_of_a_replica_the_registry_does_not_know_is_pointed_out(tmp_path: Path) -> None:
    base = replicas_dir(tmp_path, "a", "z")
    lines = verify_replicas(base, KEY, [], seen("a"))
    assert max(status for status, _ in lines) == 0
    notes = [text for _, text in lines if text.startswith("replica z: note:")]
    assert notes == ["replica z: note: not in the replica registry of postgresql://db:5432/"
                     "pgwarden (schema pgwarden): from another deployment?"]  # fmt: skip


@pytest.fixture
def verify_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> VerifyCommand:
    monkeypatch.setenv("AUDIT_KEY", KEY.decode())
    return VerifyCommand(capsys, monkeypatch)


def test_a_bare_path_verifies_every_replicas_chain_and_says_none_are_expected(
    tmp_path: Path, verify_command: VerifyCommand
) -> None:
    base = replicas_dir(tmp_path, "a", "b")
    code, out, err = verify_command(base, "--key-env", "AUDIT_KEY")
    assert code == 0, err
    assert out.count(": ok: ") == 3
    assert "note: no PostgreSQL state store configured (--config), so the replica registry was " \
           "not read: a replica with no chain here would go unnoticed" in out  # fmt: skip


def test_allow_missing_is_refused_where_there_are_no_replicas(
    tmp_path: Path, verify_command: VerifyCommand
) -> None:
    build_log(tmp_path / "audit.jsonl", 3)
    code, _, err = verify_command(
        tmp_path / "audit.jsonl", "--key-env", "AUDIT_KEY", "--allow-missing", "c"
    )
    assert code == 2
    assert "--allow-missing is for the chains of a PostgreSQL store's replicas" in err


def test_a_sqlite_servers_log_still_verifies_alone_by_its_path(
    tmp_path: Path, verify_command: VerifyCommand
) -> None:
    build_log(tmp_path / "audit.jsonl", 3)
    replicas_dir(tmp_path, "a")  # replicas' chains beside it are not this chain's business
    code, out, _ = verify_command(tmp_path / "audit.jsonl", "--key-env", "AUDIT_KEY")
    assert code == 0
    assert out.startswith("ok: ")
    assert out.count("\n") == 1


# -- archiving replicas' chains ----------------------------------------------------------------


def archive_command(*args: str | Path) -> int:
    return main(["audit", "archive", *map(str, args)])


def test_replicas_chains_are_archived_to_one_place_each_on_its_own(
    tmp_path: Path, verify_command: VerifyCommand
) -> None:
    logs, vault = tmp_path / "logs", tmp_path / "vault"
    for name in ("a", "b"):
        rotated_log(logs / f"audit.{name}.jsonl", 40)
    base = logs / "audit.jsonl"
    assert archive_command(base, "--to", vault, "--keep", "0", "--key-env", "AUDIT_KEY") == 0
    names = sorted(path.name for path in vault.iterdir())
    assert any(n.startswith("audit.a.jsonl.anchor.") for n in names)
    assert any(n.startswith("audit.b.jsonl.anchor.") for n in names)
    assert len(log_files(logs / "audit.a.jsonl")) == 1  # only the active file is left
    code, out, err = verify_command(base, "--key-env", "AUDIT_KEY")
    assert code == 0, err
    assert "after the records archived up to seq" in out
    code, out, err = verify_command(base, "--archive", vault, "--key-env", "AUDIT_KEY")
    assert code == 0, err
    assert out.count("archived), head seq") == 2
