"""How a runtime joins the replicas of a cluster: the few calls `proxy/runtime/serve.py` makes.

With a PostgreSQL store, every process of a server is part of its replica (`Cluster`):

- before the session registry is made, `join_cluster` registers the replica (the primary) or
  looks up its slot (a worker), so that every cancel key carries the slot;
- every process forwards a CancelRequest for another replica's key (`Cluster.peers`, given to
  the proxy's context);
- the primary keeps the replica's heartbeat, session rows and kill orders (`attach_sync`, then
  `start` once the listeners are bound, `stop` after the sessions ended), and the API lists
  and kills the other replicas' sessions through it (`Cluster.sync`).

With SQLite there is one server: `join_cluster` returns None and the helpers do nothing.
`wake_on_kill_order(payload)` is the change feed's listener for `kills_channel(schema)`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.cluster import replica_sql
from proxy.cluster.peers import Peers
from proxy.cluster.registry import Membership, join_as_primary, join_as_worker
from proxy.cluster.sessions import OtherProcesses, ReplicaSync
from proxy.config import ListenAddress, ServerConfig, StateBackend
from proxy.session.observer import SessionObserver
from proxy.session.registry import SessionRegistry
from proxy.session.session import Session
from proxy.upstream.orphans import SweepScope

log = logging.getLogger(__name__)

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names them to warn of them


def kills_channel(schema: str) -> str:
    """The NOTIFY channel of kill orders in the store in `schema` (payload: the holder's id)."""
    digest = hashlib.sha256(f"pgwarden kill orders {schema}".encode()).hexdigest()
    return f"pgwarden_kills_{digest[:12]}"


@dataclass(eq=False)
class Cluster:
    """This process's part in its replica."""

    config: ServerConfig
    member: Membership
    peers: Peers
    sync: ReplicaSync | None = None  # the primary's, once attached
    _closed: bool = field(default=False, init=False)

    @property
    def slot(self) -> int:
        return self.member.slot

    @property
    def observers(self) -> list[SessionObserver]:
        return [self.sync.observer] if self.sync is not None else []

    def attach_sync(
        self,
        registry: SessionRegistry[Session],
        workers: OtherProcesses | None,
        reachable: Callable[[], bool],
    ) -> None:
        """The primary: heartbeat, session rows and kill orders, over these sessions.
        `reachable`: whether the state database answers now (rows are written ahead then)."""
        if self.member.registration is not None:
            channel = kills_channel(self.config.state.schema)
            self.sync = ReplicaSync(
                self.member, registry, workers, self.peers, channel, reachable=reachable
            )

    def sweep_scope(self) -> SweepScope:
        """What this replica's orphan sweep may end: the backends its earlier life recorded,
        none a live replica holds now (upstream/orphans.py)."""
        registration = self.member.registration
        left = registration.left_behind if registration is not None else ()
        held = registration.held_elsewhere if registration is not None else ()
        return SweepScope(_by_target(left), _by_target(held))

    def listeners(self) -> dict[str, Callable[[str], None]]:
        """What this process wants to hear from the change feed: kill orders, if it holds
        the replica's sessions (the primary)."""
        if self.sync is None:
            return {}
        return {kills_channel(self.config.state.schema): self.wake_on_kill_order}

    def wake_on_kill_order(self, payload: str) -> None:
        """The change feed's listener on `kills_channel` (its thread): an order for us?"""
        if self.sync is not None and payload == self.member.replica_id:
            self.sync.wake()

    async def start(self, proxy_port: int, api_port: int) -> None:
        """Once listening: record where this replica is reached, and beat from now on."""
        if self.sync is None:
            return
        config = self.config
        advertise = config.state.advertise
        proxy = str(advertise) if advertise is not None else _bound(config.proxy.listen, proxy_port)
        if advertise is None and config.proxy.listen.host in WILDCARD_HOSTS:
            log.warning(
                "proxy.listen is %s and state.advertise is not set: the other replicas cannot "
                "forward cancel requests to this one; set state.advertise to its reachable address",
                config.proxy.listen,
            )
        await self.sync.start(proxy, _bound(config.api.listen, api_port))

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.sync is not None:
            await self.sync.stop()
        else:
            self.member.close()

    def abandon(self) -> None:
        """A start that failed: leave the registry at once (blocking; idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.sync is not None:
            self.sync.leave()
        else:
            if self.member.registration is not None:
                _leave_quietly(self.member)
            self.member.close()


def join_cluster(
    config: ServerConfig, worker: int, monotonic: Callable[[], float]
) -> Cluster | None:
    """This process's part in its replica (None with SQLite); ReplicaRefused if another live
    replica has this one's name."""
    if config.state.backend is not StateBackend.POSTGRES:
        return None
    member = join_as_primary(config) if worker == 0 else join_as_worker(config)
    load = functools.partial(member.db.run, replica_sql.peers, member.replica_id)
    return Cluster(config, member, Peers(member.slot, load, monotonic))


def _leave_quietly(member: Membership) -> None:
    assert member.registration is not None
    try:
        member.db.run(replica_sql.stop, member.registration)
    except Exception as exc:
        log.warning("could not mark replica %s stopped: %s", member.replica_id, exc)


def _bound(listen: ListenAddress, port: int) -> str:
    """The listen address with the port actually bound (0 in the config: any free port)."""
    return str(ListenAddress(listen.host, port))


def _by_target(pids: tuple[tuple[str, int], ...]) -> dict[str, frozenset[int]]:
    found: dict[str, set[int]] = {}
    for target, pid in pids:
        found.setdefault(target, set()).add(pid)
    return {target: frozenset(each) for target, each in found.items()}
