"""The channel between pgwarden's primary process and a worker: JSON lines on a socketpair.

Each line is one JSON object with an `op`. A *call* also carries an `id` and is answered by one
line `{"reply": id, "result": {...}}` or `{"reply": id, "error": "..."}`; a *notice* has no id
and no answer. Notices are handled in the order they arrive (a worker must learn a temporary
password before anything that follows it); calls run concurrently (ending a session may take
seconds) and time out at the caller.

Both ends are pgwarden processes of one installation, so a malformed line is a bug, not an
attack: it is logged and the channel is closed, which each end treats as the other one's death.
The line length is bounded all the same (`MAX_LINE`), like every buffer here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
from collections.abc import Awaitable, Callable

from proxy.errors import PgwardenError

log = logging.getLogger(__name__)

# A metrics snapshot is the largest message: a few hundred series of bounded label sets.
MAX_LINE = 4 * 1024 * 1024
# Unread output a stalled peer may leave us holding before the channel is given up for dead.
MAX_BUFFERED = 4 * MAX_LINE
CALL_TIMEOUT = 10.0  # seconds; a kill waits up to 5 s for the session to be gone

Message = dict[str, object]
Handler = Callable[[str, Message], Awaitable[Message | None]]


class ChannelClosed(PgwardenError):
    """The other end of the worker channel is gone (or answered with an error)."""


class WorkerChannel:
    """One end of a worker channel: `notify`, `call`, and `run` to serve the other end."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket, handler: Handler) -> WorkerChannel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
        return cls(reader, writer, handler)

    def notify(self, op: str, **fields: object) -> None:
        """Send a notice; dropped (with a log line) when the channel is closed."""
        self._send({"op": op, **fields})

    async def call(self, op: str, *, timeout: float = CALL_TIMEOUT, **fields: object) -> Message:
        """Send a call and wait for its answer; ChannelClosed if there is none."""
        if self.closed:
            raise ChannelClosed(f"worker channel closed before {op!r}")
        call_id = next(self._ids)
        answer: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = answer
        try:
            self._send({"op": op, "id": call_id, **fields})
            return await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            raise ChannelClosed(f"no answer to {op!r} within {timeout:.0f} s") from None
        finally:
            self._pending.pop(call_id, None)

    async def run(self) -> None:
        """Serve the other end until it closes the channel (or breaks the protocol)."""
        try:
            while line := await self._reader.readline():
                message = json.loads(line)
                if not isinstance(message, dict):
                    raise ValueError("a channel line must be a JSON object")
                await self._dispatch(message)
        except (ValueError, ConnectionError, asyncio.LimitOverrunError) as exc:
            log.error("worker channel: %s; closing it", exc)
        except Exception:  # a handler's bug, a pathological line: the channel is dead either way
            log.exception("worker channel failed; closing it")
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(ChannelClosed("worker channel closed"))
        for task in self._tasks:
            task.cancel()
        self._writer.close()

    async def _dispatch(self, message: Message) -> None:
        reply = message.get("reply")
        if isinstance(reply, int):
            self._answered(reply, message)
            return
        op = message.get("op")
        if not isinstance(op, str):
            raise ValueError("a channel line needs an op")
        call_id = message.get("id")
        if call_id is None:
            await self._handler(op, message)
            return
        task = asyncio.get_running_loop().create_task(self._answer(op, call_id, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answered(self, call_id: int, message: Message) -> None:
        answer = self._pending.get(call_id)
        if answer is None or answer.done():
            return  # answered after its caller gave up
        error = message.get("error")
        result = message.get("result")
        if error is not None:
            answer.set_exception(ChannelClosed(f"the other end failed: {error}"))
        elif isinstance(result, dict):
            answer.set_result(result)
        else:
            answer.set_exception(ChannelClosed("an answer without a result"))

    async def _answer(self, op: str, call_id: object, message: Message) -> None:
        try:
            result = await self._handler(op, message)
        except Exception as exc:
            log.exception("channel call %r failed", op)
            self._send({"reply": call_id, "error": f"{type(exc).__name__}: {exc}"})
            return
        self._send({"reply": call_id, "result": result or {}})

    def _send(self, message: Message) -> None:
        what = message.get("op", "a reply")
        if self.closed:
            log.warning("worker channel closed; dropped %r", what)
            return
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_LINE:  # the other end would take it for a broken channel
            log.error("worker channel: %r is %d bytes, over %d; dropped", what, len(line), MAX_LINE)
            return
        if self._writer.transport.get_write_buffer_size() > MAX_BUFFERED:
            log.error("worker channel: the other end reads nothing; closing it")
            self.close()
            return
        self._writer.write(line)


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(the primary's end, the worker's end); the worker's end is inherited by the child."""
    primary, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    worker.set_inheritable(True)
    return primary, worker


def adopt(fd: int) -> socket.socket:
    """The worker's end of the channel, from the descriptor the primary passed down."""
    sock = socket.socket(fileno=fd)
    with contextlib.suppress(OSError):
        sock.set_inheritable(False)
    return sock
