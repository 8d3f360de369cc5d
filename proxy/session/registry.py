"""Live sessions, and the cancel keys pgwarden handed out for them.

Every logged-in session is registered here under a random session id and a cancel key, as
`BackendKeyData` carries it: the upstream backend's *real* process id (so that
`pg_terminate_backend(backend_pid)`, `pg_stat_activity` and a NOTIFY's sender pid all agree with
what the client was told) and a random secret of pgwarden's own. Clients never see the upstream's
secret: a CancelRequest is looked up here by (process id, secret) — two upstream servers may well
have backends with equal pids, so a pid may hold several sessions, each compared in constant time
— and only a key that matches a live session's is turned into a cancel of that session's upstream
backend (SECURITY.md row 26). A session's key dies with the session.

With several worker processes (`proxy.workers`), a CancelRequest arrives on a new connection that
the kernel may hand to any worker. The low bits of the secret's last byte name the worker that
issued it — as few bits as the number of workers needs (none for one process, 1 for two, at most
`WORKER_BITS`), so the unguessable part stays long: at least 26 of the 32 bits, 31 with two
workers — and the process that receives the request knows where to send it (`owner`).

With several replicas (a PostgreSQL state store, proxy/cluster), the top `SLOT_BITS` of the
secret name the replica's slot, wherever the worker bits are (replicas may run different numbers
of workers): a CancelRequest that a load balancer hands to another replica is forwarded to the
one that issued the key (`replica_slot`). The unguessable part is then 32 - 6 - worker bits: 26
with one process, at least 20 with 64. A single server (SQLite) spends no bits on a slot.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

# Postgres' BackendKeyData in protocol 3.0 carries a 4-byte secret; libpq rejects any other size.
CANCEL_SECRET_BYTES = 4
WORKER_BITS = 6  # up to 64 workers (config.MAX_WORKERS)
SLOT_BITS = 6  # up to 64 replicas (proxy/cluster/replica_sql.py MAX_SLOTS)
_SLOT_SHIFT = CANCEL_SECRET_BYTES * 8 - SLOT_BITS
_NO_SECRET = bytes(CANCEL_SECRET_BYTES)  # compared against when a pid is unknown


class Registered(Protocol):
    """What the registry needs of a session."""

    @property
    def session_id(self) -> str: ...

    @property
    def cancel_process_id(self) -> int: ...

    @property
    def cancel_secret(self) -> bytes: ...


S = TypeVar("S", bound=Registered)


class SessionRegistry(Generic[S]):
    """Live sessions by id and by cancel key; `worker` of `workers` processes, of the replica
    in `slot` (None: a single server)."""

    def __init__(self, worker: int = 0, workers: int = 1, slot: int | None = None) -> None:
        if not 1 <= workers <= 1 << WORKER_BITS:
            raise ValueError(f"{workers} workers do not fit the cancel key")
        if not 0 <= worker < workers:
            raise ValueError(f"worker index {worker} out of range")
        if slot is not None and not 0 <= slot < 1 << SLOT_BITS:
            raise ValueError(f"replica slot {slot} out of range")
        self.worker = worker
        self.slot = slot
        self._worker_bits = (workers - 1).bit_length()
        self._by_id: dict[str, S] = {}
        self._by_pid: dict[int, list[S]] = {}

    def new_cancel_key(self, process_id: int) -> bytes:
        """A fresh secret for a session on backend `process_id`, naming this worker, that no live
        session with that pid holds."""
        bits = self._worker_bits
        slot_bits, named = (0, 0) if self.slot is None else (SLOT_BITS, self.slot << _SLOT_SHIFT)
        while True:
            random = secrets.randbits(CANCEL_SECRET_BYTES * 8 - slot_bits - bits)
            value = named | random << bits | self.worker
            secret = value.to_bytes(CANCEL_SECRET_BYTES, "big")
            if all(s.cancel_secret != secret for s in self._by_pid.get(process_id, ())):
                return secret

    @staticmethod
    def new_session_id() -> str:
        return secrets.token_hex(8)

    def add(self, session: S) -> None:
        same_pid = self._by_pid.setdefault(session.cancel_process_id, [])
        if session.session_id in self._by_id or any(
            s.cancel_secret == session.cancel_secret for s in same_pid
        ):
            raise RuntimeError("session id or cancel key registered twice")
        self._by_id[session.session_id] = session
        same_pid.append(session)

    def remove(self, session: S) -> None:
        if self._by_id.get(session.session_id) is session:
            del self._by_id[session.session_id]
        same_pid = self._by_pid.get(session.cancel_process_id, [])
        same_pid[:] = [s for s in same_pid if s is not session]
        if not same_pid:
            self._by_pid.pop(session.cancel_process_id, None)

    def owner(self, secret: bytes) -> int:
        """The worker that issued this cancel secret."""
        return (secret[-1] if secret else 0) & ((1 << self._worker_bits) - 1)

    def replica_slot(self, secret: bytes) -> int | None:
        """The replica slot this cancel secret names (ours for a key of a size we never issue,
        which no replica holds); None for a single server."""
        if self.slot is None or len(secret) != CANCEL_SECRET_BYTES:
            return self.slot
        return int.from_bytes(secret, "big") >> _SLOT_SHIFT

    def get(self, session_id: str) -> S | None:
        return self._by_id.get(session_id)

    def find_by_cancel_key(self, process_id: int, secret: bytes) -> S | None:
        """The live session holding this key, or None; secrets are compared in constant time."""
        found = None
        for session in self._by_pid.get(process_id, ()):
            if hmac.compare_digest(session.cancel_secret, secret):
                found = session
        if process_id not in self._by_pid:
            # Compare against a dummy when the pid is unknown, so both paths do the same work.
            hmac.compare_digest(_NO_SECRET, secret)
        return found

    def __iter__(self) -> Iterator[S]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)
