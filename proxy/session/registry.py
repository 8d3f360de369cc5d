"""Live sessions, and the cancel keys pgwarden handed out for them.

Every logged-in session is registered here under a random session id and a random cancel key of
pgwarden's own (process id + secret, as `BackendKeyData` carries). Clients never see the upstream's
key: a CancelRequest is looked up here, and only a key that matches a live session's — secret
compared in constant time — is turned into a cancel of that session's upstream backend
(SECURITY.md row 26). A session's key dies with the session.

With several worker processes (`proxy.workers`), a CancelRequest arrives on a new connection that
the kernel may hand to any worker; the low `WORKER_BITS` of every process id name the worker that
issued it, so the one that receives the request knows where to send it (`owner`).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

# Postgres' BackendKeyData in protocol 3.0 carries a 4-byte secret; libpq rejects any other size.
CANCEL_SECRET_BYTES = 4
# Our "process ids" are random positive Int32s, never the upstream's, so they reveal nothing.
MAX_PROCESS_ID = 2**31 - 1
WORKER_BITS = 6  # up to 64 workers (config.MAX_WORKERS)


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
    """Live sessions by id and by cancel process id."""

    def __init__(self, worker: int = 0) -> None:
        if not 0 <= worker < 1 << WORKER_BITS:
            raise ValueError(f"worker index {worker} out of range")
        self.worker = worker
        self._by_id: dict[str, S] = {}
        self._by_pid: dict[int, S] = {}

    def new_cancel_key(self) -> tuple[int, bytes]:
        """A fresh (process id, secret) that no live session uses, naming this worker."""
        while True:
            high = secrets.randbelow(MAX_PROCESS_ID >> WORKER_BITS) + 1
            pid = high << WORKER_BITS | self.worker
            if pid not in self._by_pid:
                return pid, secrets.token_bytes(CANCEL_SECRET_BYTES)

    @staticmethod
    def new_session_id() -> str:
        return secrets.token_hex(8)

    def add(self, session: S) -> None:
        if session.session_id in self._by_id or session.cancel_process_id in self._by_pid:
            raise RuntimeError("session id or cancel key registered twice")
        self._by_id[session.session_id] = session
        self._by_pid[session.cancel_process_id] = session

    def remove(self, session: S) -> None:
        if self._by_id.get(session.session_id) is session:
            del self._by_id[session.session_id]
        if self._by_pid.get(session.cancel_process_id) is session:
            del self._by_pid[session.cancel_process_id]

    @staticmethod
    def owner(process_id: int) -> int:
        """The worker that issued this cancel process id."""
        return process_id & ((1 << WORKER_BITS) - 1)

    def get(self, session_id: str) -> S | None:
        return self._by_id.get(session_id)

    def find_by_cancel_key(self, process_id: int, secret: bytes) -> S | None:
        """The live session holding this key, or None; the secret is compared in constant time."""
        session = self._by_pid.get(process_id)
        # Compare against a dummy when the pid is unknown, so both paths do the same work.
        expected = session.cancel_secret if session is not None else bytes(CANCEL_SECRET_BYTES)
        matches = hmac.compare_digest(expected, secret)
        return session if matches and session is not None else None

    def __iter__(self) -> Iterator[S]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)
