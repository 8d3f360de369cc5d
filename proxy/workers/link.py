"""A worker process's end of the channel to the primary (see `proxy/workers/primary.py`).

The worker reads the primary's `welcome` (`join_primary`) before it builds its runtime, so that
it listens with the primary's secrets and opens the state file the primary has open (by device
and inode: never a file put in its place since). Then `PrimaryLink` remembers every temporary
password it is sent, answers `sessions` and `end` from its own registry, checks a routed
`cancel` against its own keys (in constant time, as for a CancelRequest it received itself),
reloads the policy on `reload`, and stops on `stop` or when the channel closes: a worker
without its primary would serve sessions nobody can list or kill.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from proxy.grants.store_watch import FileIdentity
from proxy.session.registry import SessionRegistry
from proxy.session.session import Ending, EndReason, Session
from proxy.workers.channel import MAX_LINE, ChannelClosed, Message, WorkerChannel, adopt
from proxy.workers.primary import sessions_answer

log = logging.getLogger(__name__)

WELCOME_TIMEOUT = 10.0  # seconds; the primary sends `welcome` right after starting the worker
END_WAIT = 5.0  # seconds for a session ended by the API to be gone (as api KILL_WAIT)

Remember = Callable[[str, datetime], None]  # (password, expires at)


@dataclass(frozen=True, slots=True)
class Welcome:
    """What the primary gives a starting worker before it listens, and the channel it came on."""

    mock_secret: bytes  # the same in every process: an unknown user gets one fake salt
    secrets: list[tuple[str, datetime]]  # the live temporary passwords, to mask in the audit log
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    state_file: FileIdentity | None = None  # the state file the primary opened


async def join_primary(fd: int) -> Welcome:
    """Open the channel the primary passed down and read its `welcome`, its first line."""
    reader, writer = await asyncio.open_unix_connection(sock=adopt(fd), limit=MAX_LINE)
    try:
        line = await asyncio.wait_for(reader.readline(), WELCOME_TIMEOUT)
        if not line:
            raise ChannelClosed("the primary closed before welcome")
        message = json.loads(line)
        if not isinstance(message, dict) or message.get("op") != "welcome":
            raise ValueError("the primary's first line must be its welcome")
        mock_secret = bytes.fromhex(str(message.get("mock_secret")))
        secrets, state_file = _pairs(message.get("secrets")), _identity(message.get("state_file"))
        return Welcome(mock_secret, secrets, reader, writer, state_file)
    except BaseException:
        writer.close()
        raise


class PrimaryLink:
    """Serves the primary's notices and calls for one worker."""

    def __init__(
        self,
        registry: SessionRegistry[Session],
        remember: Remember,
        stop: Callable[[], None],
        reload: Callable[[], object],
    ) -> None:
        self._registry = registry
        self._remember = remember
        self._stop = stop
        self._reload = reload  # the policy, when the primary got SIGHUP
        self._channel: WorkerChannel | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False  # we closed the channel ourselves (stopping)

    def start(self, welcome: Welcome) -> None:
        """Remember the welcome's secrets and serve the primary from now on."""
        for password, expires_at in welcome.secrets:
            self._remember(password, expires_at)
        self._channel = WorkerChannel(welcome.reader, welcome.writer, self._handle)
        self._reader = asyncio.get_running_loop().create_task(self._serve(self._channel))

    def notify(self, op: str, **fields: object) -> None:
        if self._channel is not None:
            self._channel.notify(op, **fields)

    def cancel_elsewhere(self, owner: int, process_id: int, secret: bytes) -> None:
        self.notify("cancel", owner=owner, process_id=process_id, secret=secret.hex())

    def close(self) -> None:
        self._closing = True
        if self._channel is not None:
            self._channel.close()

    async def _serve(self, channel: WorkerChannel) -> None:
        try:
            await channel.run()
        finally:
            if not self._closing:
                log.warning("the primary process is gone; this worker stops")
                self._stop()

    async def _handle(self, op: str, message: Message) -> Message | None:
        if op == "secret":
            self._remember(*_secret(message.get("password"), message.get("expires_at")))
        elif op == "cancel":
            self._cancel(message)
        elif op == "stop":
            self._stop()
        elif op == "reload":
            self._reload()
        elif op == "sessions":
            live = [s.info for s in self._registry if s.ending is None]
            return sessions_answer(live)
        elif op == "end":
            return await self._end(message)
        else:
            raise ValueError(f"unknown op {op!r} from the primary")
        return None

    def _cancel(self, message: Message) -> None:
        pid, secret = message.get("process_id"), message.get("secret")
        if not isinstance(pid, int) or not isinstance(secret, str):
            raise ValueError("cancel needs process_id and secret")
        session = self._registry.find_by_cancel_key(pid, bytes.fromhex(secret))
        if session is not None:
            session.cancel_running_query()

    async def _end(self, message: Message) -> Message:
        session_id = message.get("session_id")
        session = self._registry.get(session_id) if isinstance(session_id, str) else None
        if session is None or session.ending is not None:
            return {"ended": True}  # already gone
        text = message.get("message")
        ending = Ending(
            EndReason.KILLED,
            text if isinstance(text, str) else None,
            detail=str(message.get("detail", "")),
        )
        session.terminate(ending)
        try:
            await asyncio.wait_for(session.wait_ended(), END_WAIT)
        except TimeoutError:
            return {"ended": False}
        return {"ended": True}


def _identity(value: object) -> FileIdentity | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
        raise ValueError("state_file must be [device, inode]")
    return FileIdentity(*value)


def _pairs(value: object) -> list[tuple[str, datetime]]:
    """[(password, expires at)] from [[password, iso time], ...]; malformed pairs are an error."""
    pairs: list[tuple[str, datetime]] = []
    for item in value if isinstance(value, list) else []:
        if not (isinstance(item, list) and len(item) == 2):
            raise ValueError("a secret must be [password, expires_at]")
        pairs.append(_secret(*item))
    return pairs


def _secret(password: object, expires_at: object) -> tuple[str, datetime]:
    if not isinstance(password, str):
        raise ValueError("a secret's password must be text")
    expiry = datetime.fromisoformat(str(expires_at))
    if expiry.tzinfo is None:
        raise ValueError("a secret's expiry needs its UTC offset")
    return password, expiry
