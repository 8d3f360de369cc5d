"""`pgwarden store migrate --from sqlite:PATH --to postgres` (issue 17): a one-host state, copied.

A SQLite state with a request in every state, approvals, credentials, several transitions per
request, API tokens (one revoked, one used) and the notification outbox (a row delivered and
pruned, one waiting) goes into a PostgreSQL schema of the harness server (tests/fixtures/
pg_state.py). What these tests check with their own reads, not the command's: every table's rows
are equal value for value (ids, instants, verifiers, digests, seqs), every request's history read
through `Store.read()` on both sides is equal, the file is left byte for byte as it was, and the
new store goes on where the old one stopped (a credential logs in, a token authenticates, new
history and outbox rows number after the copied ones). A store that holds anything is refused; a
copy that drops or changes a row is caught before its COMMIT and leaves the store empty; the
command, run as a process, prints its summary, records `state.migrated` in the commands' audit
chain, and refuses a second run; a real `pgwarden serve` on the PostgreSQL store accepts a
credential and a token issued by one on the SQLite file. Single sign-on's people and live API
sessions come across (a session still authenticates there); its sign-in flows and ended
sessions do not.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.api.auth import authenticate, new_token
from proxy.api.errors import ApiError
from proxy.auth.credentials import salted_password, verifier_from_salted_password
from proxy.grants import store_copy
from proxy.grants.decide import Allow
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import IssuedCredential, RequestId, RequestState
from proxy.grants.store import SqliteStore, Store
from proxy.grants.store_copy import CopyMismatch, CopyRefused, PostgresTarget, read_snapshot
from proxy.grants.store_identity import PersonRecord, SignInFlow
from proxy.identity.sessions import new_session
from proxy.identity.tokens import Person
from proxy.policy.models import GroupName, UserName
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import (
    ALICE,
    BOB,
    PROD,
    PolicyBox,
    make_policy,
    new_request,
    request_in_state,
)
from tests.fixtures.pg_state import PgState
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.served import pgwarden, serving

# The states whose making moves the clock come first, so that no later request lapses or expires.
FIRST_STATES = (RequestState.LAPSED, RequestState.EXPIRED, RequestState.DENIED,
                RequestState.CANCELLED, RequestState.REVOKED, RequestState.PENDING)  # fmt: skip
AWKWARD_REASON = "incident 42 — ünïcode, 'quotes', \"double\", back\\slash, tab\t, emoji 🚀"


@dataclass
class Populated:
    path: Path
    issued: IssuedCredential
    token: str  # alice's token (used once); bob's is revoked
    revoked_token: str


def populate(path: Path, clock: FakeClock) -> Populated:
    """A state file holding something in every table (module docstring)."""
    with SqliteStore(path) as store:
        service = GrantService(store, clock, PolicyBox(make_policy()))
        for state in FIRST_STATES:
            request_in_state(service, clock, state)
        new_request(service, reason=AWKWARD_REASON)
        active = request_in_state(service, clock, RequestState.ACTIVE)
        issued = service.issue_credential(active.id, ALICE)
        secret, token = new_token(ALICE, clock.now())
        revoked_secret, revoked = new_token(BOB, clock.now())
        with store.write() as tx:
            tx.insert_token(token)
            tx.insert_token(revoked)
            tx.revoke_token(revoked.id, clock.now())
            tx.touch_token(token.id, clock.now())
            tx.add_notification("ev-1", "slack", "request.created", '{"n": 1}', clock.now())
            tx.add_notification("ev-2", "webhook", "grant.activated", '{"n": 2}', clock.now())
            _, last = tx.due_notifications(clock.now(), 2)
            tx.notification_delivered(last.id, 1, clock.now())
        clock.advance(timedelta(seconds=1))
        with store.write() as tx:
            assert tx.prune_notifications(clock.now()) == 1  # the last id: never given again
    return Populated(path, issued, secret, revoked_secret)


@pytest.fixture
def populated(tmp_path: Path, clock: FakeClock) -> Populated:
    return populate(tmp_path / "state.db", clock)


@pytest.fixture(autouse=True)
def no_outbox_left(pg_state: PgState) -> None:
    """`pg_state` empties the tables it knows; the outbox and single sign-on's too, here."""
    pg_state.execute("TRUNCATE notifications RESTART IDENTITY")
    pg_state.execute("TRUNCATE people, api_sessions, sign_in_flows")


def migrate(source: Path, pg_state: PgState) -> dict[str, int]:
    """What the command does, in this process."""
    snapshot = read_snapshot(source)
    target = PostgresTarget(pg_state.dsn, pg_state.schema)
    try:
        target.refuse_unless_empty()
        return target.copy(snapshot)
    finally:
        target.close()
        snapshot.close()


def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, in key order (the key is the first column, or the first two)."""
    with sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True) as conn:  # no side file
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            name: conn.execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall()
            for name in names
            if not name.startswith("sqlite_")
        }


def postgres_rows(pg_state: PgState, tables: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    return {name: pg_state.query(f"SELECT * FROM {name} ORDER BY 1, 2") for name in tables}


def everything(store: Store, ids: Sequence[str]) -> list[object]:
    """Each request and its whole history, and the tokens, as the rest of pgwarden reads them."""
    with store.read() as tx:
        requests = [
            (tx.get_request(i), tx.approvals(i), tx.history(i), tx.credential(i))
            for i in map(RequestId, ids)
        ]
        return [*requests, tx.tokens()]


def fingerprint(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_every_table_comes_across_value_for_value_and_the_file_is_untouched(
    populated: Populated, pg_state: PgState
) -> None:
    before = fingerprint(populated.path.parent)
    rows = sqlite_rows(populated.path)

    copied = migrate(populated.path, pg_state)

    assert fingerprint(populated.path.parent) == before  # no byte written, no side file made
    assert postgres_rows(pg_state, list(rows)) == rows  # bytes stay bytes, ints ints
    assert {name: len(r) for name, r in rows.items()} == copied
    states = {row[7] for row in rows["requests"]}
    assert states == {state.value for state in RequestState}
    assert len(rows["transitions"]) > len(rows["requests"])  # more than one per request
    assert AWKWARD_REASON in {row[6] for row in rows["requests"]}
    ids = [row[0] for row in rows["requests"]]
    with SqliteStore(populated.path) as old:
        assert everything(pg_state.open(), ids) == everything(old, ids)


def test_the_new_store_goes_on_where_the_file_stopped(
    populated: Populated, pg_state: PgState, clock: FakeClock
) -> None:
    migrate(populated.path, pg_state)
    store = pg_state.open()
    policy = make_policy()
    service = GrantService(store, clock, lambda: policy)

    decision = service.login_decision(ALICE, PROD, clock.now())
    assert isinstance(decision, Allow)
    assert decision.grant.request_id == populated.issued.request_id
    verifier = decision.grant.verifier
    salted = salted_password(populated.issued.password, verifier.salt, verifier.iterations)
    assert verifier_from_salted_password(salted, verifier.salt, verifier.iterations) == verifier
    assert authenticate(store, populated.token, policy, clock.now()) == ALICE
    with pytest.raises(ApiError, match="this token was revoked"):
        authenticate(store, populated.revoked_token, policy, clock.now())

    (last_seq,) = pg_state.query("SELECT max(seq) FROM transitions")[0]
    counter = store.changes()
    service.revoke(populated.issued.request_id, BOB, "moved to PostgreSQL")
    assert service.history(populated.issued.request_id)[-1].why == "moved to PostgreSQL"
    assert pg_state.query("SELECT max(seq) FROM transitions") == [(last_seq + 1,)]
    assert store.changes() == counter + 1
    with store.write() as tx:
        tx.add_notification("ev-3", "slack", "grant.revoked", "{}", clock.now())
    ids = [i for (i,) in pg_state.query("SELECT id FROM notifications ORDER BY id")]
    assert ids == [1, 3]  # 2 was pruned in the file: not given again


def test_a_store_that_holds_anything_is_refused_and_left_as_it_was(
    populated: Populated, pg_state: PgState, clock: FakeClock
) -> None:
    store = pg_state.open()
    new_request(GrantService(store, clock, PolicyBox(make_policy())))
    with store.write() as tx:
        tx.insert_token(new_token(ALICE, clock.now())[1])
    before = postgres_rows(pg_state, ["requests", "transitions", "api_tokens"])

    with pytest.raises(CopyRefused) as refused:
        migrate(populated.path, pg_state)

    assert f"{store.where} already holds 1 requests and 1 API tokens" in refused.value.message
    assert f'DROP SCHEMA "{pg_state.schema}" CASCADE' in refused.value.message
    # The copy looks again under the store's lock (another copy may have run since the look).
    target, snapshot = PostgresTarget(pg_state.dsn, pg_state.schema), read_snapshot(populated.path)
    with pytest.raises(CopyRefused, match="already holds 1 requests and 1 API tokens"):
        target.copy(snapshot)
    target.close()
    snapshot.close()
    assert postgres_rows(pg_state, ["requests", "transitions", "api_tokens"]) == before


def dropping_the_last(table: str) -> Any:
    """`insert_rows` that leaves out the last row of `table`: a copy that loses a row."""
    real = store_copy.insert_rows

    def insert(conn: psycopg.Connection[Any], spec: store_copy.Table, rows: Iterator[Any]) -> None:
        kept = list(rows)
        real(conn, spec, iter(kept[:-1] if spec.name == table else kept))

    return insert


def empty(pg_state: PgState) -> bool:
    """Nothing in any table, the change counter at 0: as before the copy."""
    tables = [t.name for t in store_copy.TABLES if t.name != "change_counter"]
    counts = [pg_state.query(f"SELECT count(*) FROM {t}")[0][0] for t in tables]
    return set(counts) == {0} and pg_state.query("SELECT value FROM change_counter") == [(0,)]


def test_a_row_lost_in_the_copy_is_caught_and_nothing_is_committed(
    populated: Populated, pg_state: PgState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_copy, "insert_rows", dropping_the_last("transitions"))
    with pytest.raises(CopyMismatch) as caught:
        migrate(populated.path, pg_state)
    n = len(sqlite_rows(populated.path)["transitions"])
    assert f"transitions: {n} rows in the file, {n - 1} in PostgreSQL" in caught.value.differences
    assert any("history differs: " in d for d in caught.value.differences)
    assert empty(pg_state)


def test_a_verifier_changed_in_the_copy_is_caught_field_by_field(
    populated: Populated, pg_state: PgState, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store_copy.insert_rows
    salt = "QUFBQUFBQUFBQUFBQUFBQQ=="  # 16 bytes, another salt than any made at random
    keys = "A" * 43 + "=:" + "B" * 42 + "A="  # canonical base64 of two 32-byte keys

    def with_another_salt(verifier: str) -> str:
        iterations = verifier.split("$")[1].split(":", maxsplit=1)[0]
        return f"SCRAM-SHA-256${iterations}:{salt}${keys}"

    def insert(conn: psycopg.Connection[Any], spec: store_copy.Table, rows: Iterator[Any]) -> None:
        if spec.name == "credentials":
            rows = iter([(row[0], with_another_salt(row[1]), row[2]) for row in rows])
        real(conn, spec, rows)

    monkeypatch.setattr(store_copy, "insert_rows", insert)
    with pytest.raises(CopyMismatch) as caught:
        migrate(populated.path, pg_state)
    request_id = populated.issued.request_id
    assert caught.value.differences == (
        f"credentials: row 1 (request_id {request_id!r}) differs in verifier",
        f"request {request_id}: credential differs: salt differs",
    )
    assert salt not in caught.value.message  # named, not shown
    assert empty(pg_state)


def postgres_config(config: Path, pg_state: PgState) -> Path:
    """Beside a test deployment's config (state in `state.db`), one with the state in
    `pg_state`'s schema: same policy, same audit log."""
    text = config.read_text()
    assert "  state: state.db\n" in text
    dsn_file = config.with_name("state.dsn")
    dsn_file.write_text(pg_state.dsn + "\n")
    dsn_file.chmod(0o600)
    moved = config.with_name("pgwarden-pg.yaml")
    moved.write_text(
        text.replace("  state: state.db\n", "")
        + f"state:\n  backend: postgres\n  dsn_file: {dsn_file}\n  schema: {pg_state.schema}\n"
    )
    return moved


def test_the_command_copies_records_it_and_refuses_a_second_run(
    populated: Populated, pg_state: PgState, deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    config = postgres_config(deployment.write_files(tmp_path), pg_state)
    argv = ("store", "migrate", "--config", str(config), "--from", f"sqlite:{populated.path}",
            "--to", "postgres")  # fmt: skip
    done = pgwarden(*argv)
    assert (done.returncode, done.stderr) == (0, "")
    n = {name: len(rows) for name, rows in sqlite_rows(populated.path).items()}
    where = pg_state.open().where  # postgresql://host:port/database (schema name)
    assert done.stdout == (
        f"copied {n['requests']} requests ({n['transitions']} transitions, {n['approvals']} "
        f"approvals, {n['credentials']} credentials), {n['api_tokens']} API tokens from "
        f"{populated.path} to {where}; checked: counts and every request's history are equal\n"
    )

    again = pgwarden(*argv)
    assert again.returncode == 1
    assert again.stderr.startswith(
        f"pgwarden: {where} already holds {n['requests']} requests, {n['api_tokens']} API "
        f"tokens and {n['notifications']} outbox notifications; the copy goes only into an "
        "empty store. "
    )
    (chain,) = tmp_path.glob("audit*.commands.jsonl")  # with postgres, named after the replica
    records = [json.loads(line) for line in chain.read_text().splitlines()]
    story = [r["kind"] for r in records if r["kind"] not in ("audit.opened", "audit.closed")]
    assert story == ["state.migrated", "lifecycle.outcome"]  # the refusal recorded nothing
    (migrated,) = [r for r in records if r["kind"] == "state.migrated"]
    assert (migrated["source"], migrated["target"]) == (str(populated.path), where)
    assert (migrated["requests"], migrated["api_tokens"]) == (n["requests"], n["api_tokens"])
    (outcome,) = [r for r in records if r["kind"] == "lifecycle.outcome"]
    assert (outcome["first_seq"], outcome["committed"]) == (migrated["seq"], True)
    verified = pgwarden("audit", "verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_command_refuses_bad_arguments_and_a_config_without_postgres(
    populated: Populated, deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    config = deployment.write_files(tmp_path)
    sqlite_config = pgwarden("store", "migrate", "--config", str(config),
                             "--from", f"sqlite:{populated.path}", "--to", "postgres")  # fmt: skip
    assert sqlite_config.returncode == 2
    assert sqlite_config.stderr.startswith(
        f"pgwarden: state.backend: the config {config} keeps its state in SQLite"
    )
    not_sqlite = pgwarden("store", "migrate", "--from", str(populated.path), "--to", "postgres")
    assert not_sqlite.returncode == 2
    assert "argument --from: takes sqlite:PATH" in not_sqlite.stderr
    elsewhere = pgwarden("store", "migrate", "--from", "sqlite:x.db", "--to", "sqlite:y.db")
    assert elsewhere.returncode == 2
    assert "argument --to: takes postgres" in elsewhere.stderr


def test_a_server_on_postgres_accepts_what_a_server_on_sqlite_issued(
    pg_state: PgState, deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    config = deployment.write_files(tmp_path)
    with serving(config, tmp_path / "state.db") as before:
        status, created = before.request()
        assert status == 201, created
        request_id = created["id"]
        status, _ = before.call("POST", f"/api/v1/requests/{request_id}/approve", "carol", {})
        assert status == 200
        status, issued = before.call(
            "POST", f"/api/v1/requests/{request_id}/credentials", "alice", {}
        )
        assert status == 201, issued
        tokens = dict(before.tokens)

    moved = postgres_config(config, pg_state)
    done = pgwarden("store", "migrate", "--config", str(moved),
                    "--from", f"sqlite:{tmp_path / 'state.db'}", "--to", "postgres")  # fmt: skip
    assert done.returncode == 0, done.stderr

    with serving(moved, tmp_path / "state.db") as after:
        after.tokens.update(tokens)  # the API tokens made on the SQLite store
        status, shown = after.call("GET", f"/api/v1/requests/{request_id}", "alice")
        assert (status, shown["state"]) == (200, "active"), shown
        dsn = f"host=127.0.0.1 port={after.proxy_port} dbname=orders user=alice sslmode=disable"
        with psycopg.connect(dsn, password=issued["password"], connect_timeout=10) as session:
            assert session.execute("SELECT count(*) FROM items").fetchone() is not None


def test_people_and_live_sessions_come_across_and_flows_and_ended_sessions_do_not(
    tmp_path: Path, pg_state: PgState, clock: FakeClock
) -> None:
    path = tmp_path / "state.db"
    now, hour = clock.now(), timedelta(hours=1)
    person = Person(UserName("alice"), "https://idp.test", "sub-1", None, (GroupName("ops"),))
    live, live_session = new_session(person, now, hour)
    _, revoked = new_session(person, now, hour)
    _, ended = new_session(person, now - 2 * hour, hour)
    with SqliteStore(path) as store, store.write() as tx:
        tx.put_person(PersonRecord(person.user, person.issuer, person.subject, None,
                                   person.groups, now))  # fmt: skip
        tx.put_person(PersonRecord(UserName("gone"), person.issuer, "sub-2", "g@x.test", (),
                                   now, removed_at=now))  # fmt: skip
        for session in (live_session, revoked, ended):
            tx.insert_api_session(session)
        tx.revoke_api_session(revoked.digest, now)
        tx.insert_sign_in_flow(SignInFlow(b"f" * 32, "device", now, now + hour, device_code="d"))
    snapshot = read_snapshot(path, now)
    target = PostgresTarget(pg_state.dsn, pg_state.schema)
    try:
        copied = target.copy(snapshot)
    finally:
        target.close()
        snapshot.close()
    assert (copied["people"], copied["api_sessions"], copied["sign_in_flows"]) == (2, 1, 0)
    store = pg_state.open()
    with store.read() as tx:
        assert [p.removed_at is not None for p in tx.people()] == [False, True]
        assert tx.api_session(live_session.digest) == live_session
        assert tx.api_session(revoked.digest) is None
    assert authenticate(store, live, make_policy(), now) == ALICE  # alice is in the policy too
