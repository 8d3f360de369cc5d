"""A CancelRequest that reaches the wrong replica is forwarded to the one holding the session.

A load balancer may hand a client's cancel connection to any replica. The cancel key names its
replica (the slot in the secret's top bits), so replica b passes a CancelRequest for a session
on replica a on to a's advertised proxy address, and a cancels the running `pg_sleep`; b
closes the client's cancel connection once a has taken it. A key whose slot was forged (another
replica's, or one no replica holds) cancels nothing anywhere. The session is logged in over a
raw socket (tests/fixtures/adversary.py) to read its BackendKeyData, which psycopg keeps to
itself.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from tests.fixtures.adversary import LoggedIn, login_raw, query_message
from tests.fixtures.rawpg import error_fields
from tests.fixtures.replicas import Replicas, until
from tests.integration.replicas.registry_view import registry_rows

CANCEL_REQUEST_CODE = 80877102
SLOT_SHIFT = 26  # the top 6 bits of the 4-byte secret name the replica (session/registry.py)
UNUSED_SLOT = 63  # three replicas hold slots 0..2
RUNNING_WITHIN = 5.0  # seconds for the query to show as active in pg_stat_activity
CLOSE_TIMEOUT = 10.0  # seconds for a replica to close a cancel connection


@pytest.fixture
def sleeping(replicas: Replicas) -> Iterator[LoggedIn]:
    """A session through replica a, running `SELECT pg_sleep(60)`."""
    credential = replicas.grant()
    session = login_raw(replicas["a"].proxy_port, credential.user, credential.password)
    try:
        session.conn.send_raw(query_message("SELECT pg_sleep(60)"))
        assert until(lambda: running_query(replicas, session.process_id) is not None,
                     RUNNING_WITHIN)  # fmt: skip
        yield session
    finally:
        session.close()


def running_query(replicas: Replicas, pid: int) -> object:
    """When backend `pid`'s pg_sleep started, while it runs (None otherwise)."""
    with replicas.upstream.connect() as conn:
        row = conn.execute(
            "SELECT query_start FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
            "AND query LIKE 'SELECT pg_sleep%%'",
            (pid,),
        ).fetchone()
    return None if row is None else row[0]


def send_cancel(port: int, process_id: int, secret: bytes) -> None:
    """Send a CancelRequest to `port` and wait until the replica closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLOSE_TIMEOUT) as sock:
        sock.sendall(struct.pack("!IIi", 16, CANCEL_REQUEST_CODE, process_id) + secret)
        assert sock.recv(1) == b""  # no reply, just the close (a timeout fails the test)


def with_slot(secret: bytes, slot: int) -> bytes:
    value = int.from_bytes(secret, "big") & ((1 << SLOT_SHIFT) - 1) | slot << SLOT_SHIFT
    return value.to_bytes(4, "big")


def slots(replicas: Replicas) -> dict[str, int]:
    return dict(registry_rows(replicas, "SELECT id, slot FROM replicas"))


def query_outcome(session: LoggedIn) -> dict[str, str] | None:
    """The ErrorResponse fields the query ended with (None if it completed), up to ReadyForQuery."""
    error = None
    for _ in range(64):
        type_, payload = session.conn.read_message()
        if type_ == b"E":
            error = error_fields(payload)
        if type_ == b"Z":
            return error
    raise AssertionError("no ReadyForQuery after 64 messages")


def test_a_cancel_sent_to_another_replica_cancels_the_query_on_the_right_one(
    replicas: Replicas, sleeping: LoggedIn
) -> None:
    assert int.from_bytes(sleeping.secret, "big") >> SLOT_SHIFT == slots(replicas)["a"]
    send_cancel(replicas["b"].proxy_port, sleeping.process_id, sleeping.secret)
    outcome = query_outcome(sleeping)
    assert outcome is not None
    assert outcome["C"] == "57014", outcome  # query_canceled
    assert replicas.backend_alive(sleeping.process_id)  # a cancel, not an end


def test_a_cancel_with_a_forged_slot_cancels_nothing(
    replicas: Replicas, sleeping: LoggedIn
) -> None:
    started = running_query(replicas, sleeping.process_id)
    held = slots(replicas)
    for slot in (held["b"], held["c"], UNUSED_SLOT):
        forged = with_slot(sleeping.secret, slot)
        for via in ("b", "c"):
            send_cancel(replicas[via].proxy_port, sleeping.process_id, forged)
    # Each replica closed its cancel connection only once it had handled (or dropped) the key.
    assert running_query(replicas, sleeping.process_id) == started
    send_cancel(replicas["c"].proxy_port, sleeping.process_id, sleeping.secret)
    outcome = query_outcome(sleeping)
    assert outcome is not None
    assert outcome["C"] == "57014", outcome
