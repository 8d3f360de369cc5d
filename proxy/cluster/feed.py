"""The change feed: how a replica hears, within milliseconds, what another one changed.

Every write that matters to a live session (an approval, a revocation, a credential issued, an
expiry, a policy-driven end) bumps the store's change counter and sends a NOTIFY on the store's
channel in the same transaction (`PostgresStore._count_change`), which PostgreSQL delivers to
every listener only once it commits. The feed is one thread per replica with a connection of
its own (not the pool's) that LISTENs on that channel and on the extra channels other parts ask
for (`listen`), and:

- on each announcement, tells the grant cache the new counter and reloads the active grants
  (`grant_cache.py`), so that the next login is answered from memory and the enforcer, which
  looks at the counter every tick, re-reads its sessions' grants at once;
- every `RECONCILE_INTERVAL` anyway, reads the counter itself (a lost NOTIFY costs at most
  that), measures the offset of this host's clock to the database's (`clock_offset`), and
  publishes how stale the replica's view is;
- when its connection fails, says so (`GrantCache.listening(False)`: logins read the store, or
  its last known state for `max_staleness` when the store is down too) and connects again,
  every `RETRY_INTERVAL`, reading everything afresh once it is back.

The propagation delay (NOTIFY payload: the counter and the database's clock at commit) is
observed on this replica's clock corrected by the measured offset.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from proxy.clock import OffsetClock
from proxy.grants.grant_cache import GrantCache
from proxy.grants.pg_connection import PostgresTx, configure, roll_back
from proxy.grants.pg_schema import changes_channel

log = logging.getLogger(__name__)

RECONCILE_INTERVAL: Final = 1.0  # seconds between two reads of the counter, notifications or not
STOP_POLL: Final = 0.1  # seconds: how soon a stop is seen while no notification comes
MAX_DRAINED: Final = 1000  # notifications taken at once after the first (the rest next round)
RETRY_INTERVAL: Final = 1.0  # seconds between two attempts to connect again
CONNECT_TIMEOUT: Final = 3  # seconds (libpq's connect_timeout is whole seconds)
# A clock sample whose round trip took longer than this says little about the offset: skipped.
MAX_SAMPLE_ROUND_TRIP: Final = 0.2
# Hosts whose clocks disagree by more than this are misconfigured, not skewed: not followed.
MAX_CORRECTED_SKEW: Final = timedelta(minutes=5)
_COUNTER: Final = "SELECT value FROM change_counter WHERE id = 1"

Listener = Callable[[str], None]


class ChangeFeed:
    """One replica's listener on the state database (module docstring). `clock` is corrected
    here by the offset it measures; `on_delay` gets each propagation delay in seconds."""

    def __init__(
        self,
        conninfo: str,
        schema: str,
        cache: GrantCache,
        clock: OffsetClock,
        *,
        on_delay: Callable[[float], None] | None = None,
        on_change: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._conninfo, self._schema = conninfo, schema
        self._cache, self._clock, self._on_delay = cache, clock, on_delay
        self._on_change = on_change  # told once the grants are read again (the enforcer wakes)
        self._on_lost = on_lost  # told when the connection fails (the store looks at once)
        self.channel = changes_channel(schema)
        self._listeners: dict[str, list[Listener]] = {}
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="pgwarden-feed", daemon=True)
        self.connected = threading.Event()  # set while listening (tests wait on it)
        self._skew_reported = False

    def listen(self, channel: str, listener: Listener) -> None:
        """Call `listener(payload)` (on the feed's thread) for each NOTIFY on `channel`.
        Before `start` only."""
        self._listeners.setdefault(channel, []).append(listener)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2 * RECONCILE_INTERVAL) -> None:
        self._stop.set()  # seen within STOP_POLL: `notifies` waits no longer
        self._thread.join(timeout)

    def drop_connection(self) -> None:
        """Close the listening connection as a network failure would (tests: a lost NOTIFY)."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()

    def _run(self) -> None:
        failed = False
        while not self._stop.is_set():
            try:
                self._listen_until_stopped()
            except (psycopg.Error, OSError) as exc:
                news = self.connected.is_set() or not failed  # not a retry failing again
                self._cache.listening(False)
                self.connected.clear()
                if not self._stop.is_set():
                    level = logging.WARNING if news else logging.DEBUG
                    log.log(level, "change feed: lost the state database (%s); retrying", exc)
                    if news and self._on_lost is not None:
                        self._on_lost()
                failed = True
            except Exception:
                self._cache.listening(False)
                self.connected.clear()
                log.exception("change feed failed; retrying")
            self._stop.wait(RETRY_INTERVAL)
        self._cache.listening(False)

    def _listen_until_stopped(self) -> None:
        with psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
        ) as conn:
            configure(conn, self._schema)
            for channel in (self.channel, *self._listeners):
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self._conn = conn
            try:
                self._reconcile(conn)
                self._cache.listening(True)
                self.connected.set()
                log.info("change feed: listening on %s", self.channel)
                reconciled = self._clock.monotonic()
                while not self._stop.is_set():
                    wait = max(0.0, reconciled + RECONCILE_INTERVAL - self._clock.monotonic())
                    # Collected first: the connection stays locked while `notifies` waits, so
                    # a query from inside its loop would wait for ever. Then whatever else has
                    # come: a burst of changes is one read of the grants, not one each.
                    got = list(conn.notifies(timeout=min(wait, STOP_POLL), stop_after=1))
                    if got:
                        got += conn.notifies(timeout=0, stop_after=MAX_DRAINED)
                    self._dispatch_all(conn, got)
                    due = self._clock.monotonic() >= reconciled + RECONCILE_INTERVAL
                    if due and not self._stop.is_set():  # however busy the channel is
                        self._reconcile(conn)
                        reconciled = self._clock.monotonic()
            finally:
                self._conn = None

    def _dispatch_all(self, conn: psycopg.Connection[Any], got: list[psycopg.Notify]) -> None:
        """Other channels to their listeners; announcements into the cache, then one read of
        the grants if any is newer than it, then the delays observed."""
        committed: list[datetime] = []
        for notify in got:
            if notify.channel != self.channel:
                self._tell(notify.channel, notify.payload)
                continue
            counter, committed_at = parse_announcement(notify.payload)
            if counter is None:
                log.warning("change feed: ignored a malformed announcement %r", notify.payload[:80])
                continue
            self._cache.saw(counter)
            if committed_at is not None:
                committed.append(committed_at)
        if (version := self._cache.version) is None or self._cache.known > version:
            self._reload(conn)
            self._changed()
        if self._on_delay is not None:
            now = self._clock.now()
            for committed_at in committed:
                self._on_delay(max(0.0, (now - committed_at).total_seconds()))

    def _tell(self, channel: str, payload: str) -> None:
        for listener in self._listeners.get(channel, ()):
            try:
                listener(payload)
            except Exception:
                log.exception("listener of %s failed", channel)

    def _reconcile(self, conn: psycopg.Connection[Any]) -> None:
        """Read the counter (and the grants, if they moved) and the database's clock."""
        before = self._clock.base.now()
        row = conn.execute(f"SELECT ({_COUNTER}), clock_timestamp()").fetchone()
        after = self._clock.base.now()
        assert row is not None, "change_counter has its one row (schema)"
        counter, database_now = int(row[0]), row[1]
        if after - before <= timedelta(seconds=MAX_SAMPLE_ROUND_TRIP):
            self._set_offset(clock_offset(before, after, database_now))
        if not self._cache.confirm(counter):
            self._reload(conn)  # a NOTIFY was lost (or the feed was away): now it is known
            self._changed()

    def _changed(self) -> None:
        """Tell `on_change`; its failure is its own (logged), never the feed's."""
        if self._on_change is None:
            return
        try:
            self._on_change()
        except Exception:
            log.exception("a listener of state changes failed")

    def _set_offset(self, offset: timedelta) -> None:
        if abs(offset) <= MAX_CORRECTED_SKEW:
            self._clock.offset = offset
            self._skew_reported = False
        elif not self._skew_reported:  # a clock that far off is broken: say so, do not follow
            self._skew_reported = True
            log.error(
                "this host's clock is %.0f s off the state database's; pgwarden corrects at most "
                "%.0f s: fix the time service (NTP) of one of them",
                offset.total_seconds(), MAX_CORRECTED_SKEW.total_seconds(),
            )  # fmt: skip

    def _reload(self, conn: psycopg.Connection[Any]) -> None:
        """Every active grant and the counter they are current at, in one snapshot."""
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            row = conn.execute(_COUNTER).fetchone()
            grants = PostgresTx(conn, writable=False).all_active_grants()
        finally:
            roll_back(conn)
        self._cache.load(int(row[0]) if row is not None else 0, grants)


def parse_announcement(payload: str) -> tuple[int | None, datetime | None]:
    """(counter, commit time) from a NOTIFY payload "<counter> <epoch microseconds>"."""
    counter_text, _, micros_text = payload.partition(" ")
    if not counter_text.isdigit() or len(counter_text) > 20:
        return None, None
    committed_at = None
    if micros_text.isdigit() and len(micros_text) <= 20:
        with contextlib.suppress(OverflowError, ValueError, OSError):
            committed_at = datetime.fromtimestamp(int(micros_text) / 1e6, UTC)
    return int(counter_text), committed_at


def clock_offset(before: datetime, after: datetime, database_now: datetime) -> timedelta:
    """How far the database's clock is ahead of ours, from one sample taken between `before`
    and `after` (its error is at most half the round trip)."""
    return database_now - (before + (after - before) / 2)
