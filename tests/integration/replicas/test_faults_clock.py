"""Clocks: a replica whose host clock is off by seconds still ends sessions at the grant's end.

A grant's end is an absolute time, set by the replica that activated it; a session's deadline is
that end less the replica's "now" at login, then timed on its monotonic clock. A host running
late would so keep sessions past their end (and one running early cut them short), unless its
"now" is the state database's: each replica's change feed measures its host's offset to the
database's clock and corrects for it (proxy/cluster/feed.py).

Replica d runs in this process (tests/fixtures/pgwarden.running_pgwarden) on a clock `SKEW` off
the real one, next to a, b and c (which activate the grants, on the real clock). What the client
is told at login ("N s left") is computed from the same "now" as the deadline, so it shows which
"now" d used; then the session must end, as expired, with its backend.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest

from proxy.clock import SYSTEM_CLOCK
from proxy.grants.grant_cache import GrantCache
from proxy.policy.models import TargetName, UserName
from tests.fixtures.clients import raw_login
from tests.fixtures.pgwarden import TARGET_DB, running_pgwarden
from tests.fixtures.rawpg import error_fields
from tests.fixtures.replicas import Replicas, until
from tests.integration.replicas.test_faults import ADMIN_SHUTDOWN, BOUND

GRANT = "12s"
TOLERANCE = 2.0  # seconds: the notice rounds down, and a login takes a moment
LEFT = struct.Struct("!i")


class SkewedClock:
    """The real clock's wall time moved by `skew`, as a host whose time service is off."""

    def __init__(self, skew: timedelta) -> None:
        self.skew = skew

    def now(self) -> datetime:
        return SYSTEM_CLOCK.now() + self.skew

    def monotonic(self) -> float:
        return SYSTEM_CLOCK.monotonic()


def knows(cache: GrantCache, request_id: str) -> bool:
    grants = cache.current(UserName("alice"), TargetName(TARGET_DB)) or ()
    return any(grant.request_id == request_id for grant in grants)


def seconds_left_in(notices: list[str]) -> int:
    (notice,) = [n for n in notices if " left)" in n]
    return int(notice.rpartition("(")[2].split(" ")[0])


@pytest.mark.parametrize("skew", [-5, 5], ids=["host-late", "host-early"])
def test_a_replica_with_a_skewed_clock_ends_sessions_at_the_grants_end(
    replicas: Replicas, skew: int
) -> None:
    d = replicas.another(f"d{'late' if skew < 0 else 'early'}")
    with running_pgwarden(d.config, SkewedClock(timedelta(seconds=skew))) as running:
        view = running.runtime.replica
        assert view is not None
        assert until(lambda: abs(view.clock.offset.total_seconds() + skew) < 0.5, BOUND), (
            f"d measured an offset of {view.clock.offset}, not {-skew} s"
        )
        credential = replicas.grant(via=("a", "b", "c"), duration=GRANT)
        ends_at = datetime.fromisoformat(replicas.get(credential.request_id, "a")["ends_at"])
        # d logs in from memory once it has heard of the grant (a login sooner races that:
        # test_faults.py, test_a_credential_issued_on_one_replica_logs_in_at_once_on_another).
        assert until(lambda: knows(view.cache, credential.request_id), BOUND)
        greeting: list[tuple[bytes, bytes]] = []
        login = raw_login("127.0.0.1", d.proxy_port, credential.user, credential.password,
                          TARGET_DB, keep_greeting=greeting)  # fmt: skip
        assert login.conn is not None, login.error
        really_left = (ends_at - datetime.now(UTC)).total_seconds()
        notices = [error_fields(payload)["M"] for kind, payload in greeting if kind == b"N"]
        assert abs(seconds_left_in(notices) - really_left) <= TOLERANCE, (notices, really_left)
        (pid,) = [LEFT.unpack(p[:4])[0] for kind, p in greeting if kind == b"K"]

        with login.conn as conn:
            conn.sock.settimeout(really_left + BOUND)
            kind, payload = conn.read_message()  # the FATAL, when the grant ends
        fatal = error_fields(payload)
        assert (kind, fatal["S"], fatal["C"]) == (b"E", "FATAL", ADMIN_SHUTDOWN), fatal
        assert "(read-only) expired at" in fatal["M"]
        assert replicas.wait_gone(pid, BOUND) is not None
