"""One replica's heartbeat: it is alive, these are its sessions, and the kills asked of it.

The primary process runs `ReplicaSync`. About once a second (`HEARTBEAT_INTERVAL`), and soon
after a session of this process starts or ends or the feed says a kill order came (`wake`), it:

1. takes, on the event loop, the live sessions of this replica (its own registry and, with
   `proxy.workers`, the other processes');
2. in a thread of its own — a login or a session's end never waits on the database — stamps
   the heartbeat, writes the difference between those sessions and the rows it last wrote
   (all of them again after a failure: rows are reconciled once the database is back), and
   reads the other replicas' proxy addresses (for cancel forwarding: peers.py) and the kill
   orders for this replica;
3. carries each order out through the session's one exit, `Session.terminate`, with the
   `Ending` the ordering replica's API wrote (reason `killed`: audited and counted here as a
   local kill is), and marks it done.

Its API face (`sessions`, `find`, `order_kill`, `kill_outcome`) blocks, for the API's threads:
the sessions of the other live replicas, and kill orders for them. A replica whose heartbeat
expired (`REPLICA_TIMEOUT`) is dead: its rows are not shown, and its sessions ended with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, Protocol, TypeVar

from proxy.cluster import replica_sql as sql
from proxy.cluster.peers import Peers
from proxy.cluster.registry import Membership
from proxy.cluster.replica_sql import KillOrder
from proxy.session.observer import SessionObserver
from proxy.session.registry import SessionRegistry
from proxy.session.session import Ending, EndReason, Session, SessionInfo

log = logging.getLogger(__name__)

T = TypeVar("T")

HEARTBEAT_INTERVAL: Final = 1.0  # seconds; REPLICA_TIMEOUT is ten of them
WAKE_BATCH: Final = 0.02  # seconds a wake waits for more of a burst (many logins: one write)
WRITE_AHEAD_THREADS: Final = 2  # session rows written ahead at once (a login waits for its own)
KILL_WAIT: Final = 3.0  # seconds for a killed session to be gone (its exit takes milliseconds)


class OtherProcesses(Protocol):
    """This server's worker processes (proxy/workers/primary.py WorkerSet)."""

    async def sessions(self) -> list[SessionInfo]: ...
    async def find(self, session_id: str) -> tuple[int, SessionInfo] | None: ...
    async def end(self, worker: int, session_id: str, ending: Ending) -> bool: ...


class _Wake(SessionObserver):
    """Sessions of this process starting and ending wake the heartbeat (rows written soon); a
    session's row is written ahead of its first query when the database answers (`recorded`)."""

    def __init__(
        self, wake: Callable[[], None], record: Callable[[SessionInfo], Future[None] | None]
    ) -> None:
        self._wake, self._record = wake, record

    def session_started(self, session: Session) -> Future[None] | None:
        self._wake()
        return self._record(session.info)

    def session_ended(self, session: Session, ending: Ending) -> None:
        self._wake()


class ReplicaSync:
    """The heartbeat, session rows and kill orders of one replica (module docstring)."""

    def __init__(
        self,
        member: Membership,
        registry: SessionRegistry[Session],
        workers: OtherProcesses | None,
        peers: Peers,
        kills_channel: str,
        *,
        reachable: Callable[[], bool] = lambda: False,
    ) -> None:
        assert member.registration is not None, "the primary process registers the replica"
        self._member, self._me = member, member.registration
        self._registry, self._workers, self._peers = registry, workers, peers
        self._kills_channel = kills_channel
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="pgw-replica")
        self._written: set[str] | None = None  # session ids whose rows are in; None: unknown
        # Rows written ahead since the last beat (`_write_row`, its own threads): the beat
        # deletes them too once their sessions are gone, even a session no beat saw alive.
        self._ahead_written: set[str] = set()
        self._ahead_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # the last heartbeat failed (logged once per outage)
        self.lost = False  # another process took this replica's row over
        self._reachable = reachable
        self._ahead = ThreadPoolExecutor(WRITE_AHEAD_THREADS, thread_name_prefix="pgw-rows")
        self.observer: SessionObserver = _Wake(self.wake, self._write_ahead)

    @property
    def replica_id(self) -> str:
        return self._member.replica_id

    def wake(self) -> None:
        """Beat soon (any thread: the change feed calls it on a kill order's NOTIFY)."""
        loop, woken = self._loop, self._woken
        if loop is not None and woken is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: we are stopping
                loop.call_soon_threadsafe(woken.set)

    async def start(self, proxy_address: str, api_address: str) -> None:
        """Once the listeners are bound: their real addresses, then a beat every second."""
        self._loop, self._woken = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self._blocking(
                self._member.db.run, sql.set_addresses, self._me, proxy_address, api_address
            )
        except Exception as exc:
            log.warning("could not record this replica's addresses (the next beat will): %s", exc)
        self._task = self._loop.create_task(self._run())

    async def stop(self) -> None:
        """A clean stop: no more beats, the row marked stopped, this replica's rows gone."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.leave)

    def leave(self) -> None:
        """Blocking: mark the row stopped and close the registry's connections."""
        try:
            if not self.lost:
                self._member.db.run(sql.stop, self._me)
        except Exception as exc:  # its heartbeat expires: the row is dead by then all the same
            log.warning("could not mark replica %s stopped in the registry: %s",
                        self.replica_id, exc)  # fmt: skip
        finally:
            self._thread.shutdown(wait=True)
            self._member.close()

    async def _run(self) -> None:
        assert self._woken is not None
        while not self.lost:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that comes
            # as the event is set, and the task would never end (bpo-42130).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_INTERVAL):
                    await self._woken.wait()
                await asyncio.sleep(WAKE_BATCH)
            self._woken.clear()
            try:
                await self.beat()
            except Exception as exc:
                if not self._failing:
                    log.warning("replica %s: heartbeat failed: %s", self.replica_id, exc)
                self._failing = True
            else:
                if self._failing:
                    log.info("replica %s: heartbeat back", self.replica_id)
                self._failing = False

    async def beat(self) -> None:
        """One heartbeat (module docstring: steps 1 to 3)."""
        live = await self._live_sessions()
        done = await self._blocking(self._write, live)
        if done is None:
            return
        table, orders = done
        self._peers.update(table)
        if orders:
            await asyncio.gather(*(self._carry_out(order) for order in orders))

    async def _live_sessions(self) -> dict[str, SessionInfo]:
        infos = [session.info for session in self._registry if session.ending is None]
        if self._workers is not None:
            infos += await self._workers.sessions()
        return {info.session_id: info for info in infos}

    def _write(self, live: dict[str, SessionInfo]) -> tuple[dict[int, str], list[KillOrder]] | None:
        """In the heartbeat's thread: beat, write the difference, read addresses and orders."""
        db, me, lock = self._member.db, self._me, self._member.name_lock
        # The name's lock dies with its connection (a database restart): take it again.
        if (lock is not None and not lock.take()) or not db.run(sql.heartbeat, me):
            log.error(
                'replica "%s" was registered again by another process while this one could not '
                "reach the state database; this one no longer lists its sessions or takes kill "
                "orders: give each server its own state.replica",
                me.replica_id,
            )
            self.lost = True
            return None
        with self._ahead_lock:
            ahead, self._ahead_written = self._ahead_written, set()
        ids, written = set(live), self._written
        if written is not None:
            written |= ahead
        gone = None if written is None else sorted(written - ids)
        new = [info for i, info in live.items() if written is None or i not in written]
        if gone is None or gone or new:
            self._written = None  # unknown until this write is known to have landed
            db.run(sql.write_sessions, me, gone, new)
        self._written = ids
        return db.run(sql.peers, me.replica_id), db.run(sql.pending_kills, me)

    async def _carry_out(self, order: KillOrder) -> None:
        ending = Ending(EndReason.KILLED, order.message, detail=order.detail)
        ended = await self._end(order.session_id, ending)
        try:
            await self._blocking(self._member.db.run, sql.finish_kill, order.id, ended=ended)
        except Exception as exc:  # the order is carried out again next beat: ending is idempotent
            log.warning("could not mark kill order %d done: %s", order.id, exc)

    async def _end(self, session_id: str, ending: Ending) -> bool:
        session = self._registry.get(session_id)
        if session is not None:
            session.terminate(ending)  # a session already ending keeps its first ending
            try:
                await asyncio.wait_for(session.wait_ended(), KILL_WAIT)
            except TimeoutError:
                return False
            return True
        found = await self._workers.find(session_id) if self._workers is not None else None
        if found is None:
            return True  # it ended before the order came
        assert self._workers is not None
        return await self._workers.end(found[0], session_id, ending)

    def _write_ahead(self, info: SessionInfo) -> Future[None] | None:
        """The session's row, before it relays anything: so that a restart after kill -9 finds
        its backend (upstream/orphans.py) however soon the crash came. Only while the database
        answers (`reachable`: the change feed is connected); otherwise, or if the write fails,
        the login goes on and the row follows with the next heartbeat. The future never fails:
        the login waits for it, it does not depend on it."""
        if not self._reachable():
            return None
        return self._ahead.submit(self._write_row, info)

    def _write_row(self, info: SessionInfo) -> None:
        try:
            self._member.db.run(sql.write_session_ahead, self._me, info)
        except Exception as exc:
            log.debug("session %s: row not written ahead: %s", info.session_id, exc)
            return
        with self._ahead_lock:
            self._ahead_written.add(info.session_id)

    async def _blocking(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    # -- the API's face (blocking: called in the API's threads) ---------------------------------

    def sessions(self) -> list[tuple[str, SessionInfo]]:
        """(replica, session) of every other live replica."""
        rows = self._member.db.run(sql.other_sessions, self.replica_id)
        return [(row.replica_id, row.info) for row in rows]

    def find(self, session_id: str) -> tuple[str, bool, SessionInfo] | None:
        """(replica, whether it is live, session) of another replica's session."""
        row = self._member.db.run(sql.find_session, session_id, self.replica_id)
        return None if row is None else (row.replica_id, row.live, row.info)

    def order_kill(
        self, holder: str, session_id: str, *, actor: str, message: str, detail: str
    ) -> int:
        """Order replica `holder` to end a session; the order's id."""
        return self._member.db.run(
            sql.order_kill, holder, session_id, actor=actor, via=self.replica_id,
            message=message, detail=detail, channel=self._kills_channel,
        )  # fmt: skip

    def kill_outcome(self, order: int) -> bool | None:
        return self._member.db.run(sql.kill_outcome, order)
