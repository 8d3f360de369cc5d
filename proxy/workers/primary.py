"""The primary's worker processes: start them, restart them when they die, talk to them, stop them.

`WorkerSet` runs workers 1..N-1 as child processes (`pgwarden serve --worker K`), each with a
channel (`proxy/workers/channel.py`) on an inherited socketpair. What the primary tells them:

- `welcome` first, before a worker listens: the temporary passwords the redactor must mask and
  the secret behind mock SCRAM answers (the same in every process, or an unknown user's salt
  would differ between workers and give the user away, SECURITY.md row 14);
- `secret` for every password issued afterwards, sent before the API answers with it;
- `cancel`: a CancelRequest another process received for a key this worker issued;
- `stop`: end sessions with the shutdown grace and exit.

What it asks: `sessions` (the live ones) and `end` (a session, by id), for the API. Workers send
`ready` once listening, `metrics` (their Prometheus text, and whether their audit log accepts
records) every second, and `cancel` to route.

A worker that exits is started again after `RESTART_DELAY` (doubling while it keeps failing at
once, up to `MAX_RESTART_DELAY`); its sessions ended with it. A worker whose channel closes (the
primary died) stops by itself (`proxy/runtime/serve.py`), so no worker outlives the primary for
long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from proxy.errors import PgwardenError
from proxy.session.session import Ending, SessionInfo
from proxy.workers.channel import ChannelClosed, Message, WorkerChannel, channel_pair
from proxy.workers.shares import info_from_json, info_to_json

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # seconds for a worker to listen after it is started
RESTART_DELAY = 1.0  # seconds before a dead worker is started again
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 10.0  # seconds: a worker that ran this long died of something new; restart soon
STOP_MARGIN = 5.0  # seconds past the shutdown grace before a worker is killed
LIST_TIMEOUT = 2.0  # seconds for a worker to list its sessions (an API call waits for it)

Command = Callable[[int, int], list[str]]  # (worker index, channel fd) -> argv


class WorkersFailed(PgwardenError):
    """A worker process did not start."""


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: WorkerChannel | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    listened: bool = False  # ever: a worker that never did is broken, not unlucky
    metrics: str = ""
    audit_healthy: bool = True  # as of its last `metrics` notice


class WorkerSet:
    """Workers 1..count-1 of this server, seen from the primary (worker 0)."""

    def __init__(
        self,
        count: int,
        command: Command,
        welcome: Callable[[], Message],
        cancel_here: Callable[[int, bytes], None],
        *,
        monotonic: Callable[[], float],
        started: Callable[[int, int], None] = lambda worker, pid: None,
    ) -> None:
        self._monotonic = monotonic
        self._started = started  # (worker, pid): the primary records it in its audit log
        self._workers = {k: _Worker(k) for k in range(1, count)}
        self._command = command
        self._welcome = welcome
        self._cancel_here = cancel_here
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start(), for share_secret
        self._first_failure = asyncio.Event()  # a worker died before it ever listened

    async def start(self) -> None:
        """Start every worker and wait until each listens; WorkersFailed if one does not."""
        self._loop = loop = asyncio.get_running_loop()
        self._keepers = [loop.create_task(self._keep(w)) for w in self._workers.values()]
        all_ready = loop.create_task(self._all_ready())
        one_failed = loop.create_task(self._first_failure.wait())
        done, _ = await asyncio.wait(
            [all_ready, one_failed], timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        all_ready.cancel()
        one_failed.cancel()
        if all_ready not in done:
            await self.stop(0.0)
            raise WorkersFailed(
                "a worker process exited before it listened (see its log lines above)"
                if one_failed in done
                else f"a worker process did not listen within {START_TIMEOUT:.0f} s"
            )

    async def _all_ready(self) -> None:
        for worker in self._workers.values():
            await worker.ready.wait()

    def broadcast(self, op: str, **fields: object) -> None:
        for worker in self._workers.values():
            if worker.channel is not None and not worker.channel.closed:
                worker.channel.notify(op, **fields)

    def share_secret(self, password: str, expires_at: datetime) -> None:
        """From any thread: queue a temporary password for every worker, in issue order.

        The API issues passwords on its threads and answers on the loop after this call, so
        (the loop running callbacks in order) every worker has it before the person who asked.
        """
        if self._loop is None:
            return  # not started: a worker that starts later gets it in its welcome
        self._loop.call_soon_threadsafe(
            lambda: self.broadcast("secret", password=password, expires_at=expires_at.isoformat())
        )

    def route_cancel(self, owner: int, process_id: int, secret: bytes) -> None:
        """A CancelRequest for `owner`'s key: checked there (or here, for the primary's)."""
        if owner == 0:
            self._cancel_here(process_id, secret)
            return
        worker = self._workers.get(owner)
        if worker is not None and worker.channel is not None:
            worker.channel.notify("cancel", process_id=process_id, secret=secret.hex())

    def metrics_snapshots(self) -> dict[int, str]:
        return {k: w.metrics for k, w in self._workers.items() if w.metrics and w.channel}

    async def sessions(self) -> list[SessionInfo]:
        """The live sessions of every worker that answers."""
        found: list[SessionInfo] = []
        for _, answer in await self._ask_all("sessions", LIST_TIMEOUT):
            found.extend(info_from_json(item) for item in _items(answer.get("sessions")))
        return found

    async def find(self, session_id: str) -> tuple[int, SessionInfo] | None:
        for worker, answer in await self._ask_all("sessions", LIST_TIMEOUT):
            for item in _items(answer.get("sessions")):
                info = info_from_json(item)
                if info.session_id == session_id:
                    return worker, info
        return None

    async def end(self, worker: int, session_id: str, ending: Ending) -> bool:
        """End a session in `worker`; True once it is gone (False if it outlasted the wait)."""
        channel = self._workers[worker].channel
        if channel is None:
            return True  # the worker died, and its sessions with it
        try:
            answer = await channel.call(
                "end", session_id=session_id, message=ending.message, detail=ending.detail
            )
        except ChannelClosed:
            return channel.closed  # gone with its worker; else it did not answer in time
        return answer.get("ended") is True

    def problems(self) -> str | None:
        """For /readyz: a worker whose audit log fails (it refuses sessions). A worker that is
        down refuses nothing: the kernel hands new connections to the listeners still open."""
        for index, worker in self._workers.items():
            if worker.channel is not None and not worker.audit_healthy:
                return f"worker {index} cannot write its audit log"
        return None

    async def stop(self, grace: float) -> None:
        """Tell every worker to stop; kill any still running `grace + STOP_MARGIN` later."""
        self._stopping.set()
        self.broadcast("stop")
        processes = [w.process for w in self._workers.values() if w.process is not None]
        waits = [p.wait() for p in processes if p.returncode is None]
        if waits:
            _, late = await asyncio.wait(
                [asyncio.ensure_future(w) for w in waits], timeout=grace + STOP_MARGIN
            )
            if late:
                log.error("%d worker(s) did not stop in time; killing them", len(late))
                for process in processes:
                    if process.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()
                await asyncio.wait(late, timeout=STOP_MARGIN)
        for task in self._keepers:
            task.cancel()
        for worker in self._workers.values():
            if worker.channel is not None:
                worker.channel.close()

    async def _ask_all(self, op: str, timeout: float) -> list[tuple[int, Message]]:
        live = [
            (k, w.channel)
            for k, w in self._workers.items()
            if w.channel is not None and not w.channel.closed
        ]
        answers = await asyncio.gather(
            *(channel.call(op, timeout=timeout) for _, channel in live), return_exceptions=True
        )
        result: list[tuple[int, Message]] = []
        for (k, _), answer in zip(live, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("worker %d did not answer %r: %s", k, op, answer)
            else:
                result.append((k, answer))
        return result

    async def _keep(self, worker: _Worker) -> None:
        delay = RESTART_DELAY
        while not self._stopping.is_set():
            started = self._monotonic()
            try:
                code = await self._run_once(worker)
            except (OSError, ChannelClosed) as exc:
                code = None
                log.error("worker %d could not be started: %s", worker.index, exc)
            if self._stopping.is_set():
                return
            if not worker.listened:
                self._first_failure.set()
            delay = RESTART_DELAY if self._monotonic() - started > STABLE_AFTER else delay
            log.error(
                "worker %d exited (code %s); its sessions ended; starting it again in %.0f s",
                worker.index, code, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)

    async def _run_once(self, worker: _Worker) -> int | None:
        primary_end, worker_end = channel_pair()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *self._command(worker.index, worker_end.fileno()), pass_fds=(worker_end.fileno(),)
            )
        except BaseException:
            primary_end.close()
            raise
        finally:
            worker_end.close()
        self._started(worker.index, worker.process.pid)
        worker.channel = channel = await WorkerChannel.open(
            primary_end, lambda op, m: self._from_worker(worker, op, m)
        )
        channel.notify("welcome", **self._welcome())
        reader = asyncio.get_running_loop().create_task(channel.run())
        try:
            return await worker.process.wait()
        finally:
            channel.close()
            reader.cancel()
            worker.channel, worker.metrics, worker.audit_healthy = None, "", True
            worker.ready.clear()

    async def _from_worker(self, worker: _Worker, op: str, message: Message) -> Message | None:
        if op == "ready":
            worker.ready.set()
            worker.listened = True
        elif op == "metrics":
            worker.metrics = str(message.get("text", ""))
            worker.audit_healthy = message.get("audit_healthy") is not False
        elif op == "cancel":
            owner, pid = message.get("owner"), message.get("process_id")
            secret = bytes.fromhex(str(message.get("secret", "")))
            if isinstance(owner, int) and isinstance(pid, int):
                self.route_cancel(owner, pid, secret)
        else:
            raise ValueError(f"unknown op {op!r} from worker {worker.index}")
        return None


def _items(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def sessions_answer(infos: list[SessionInfo]) -> Message:
    return {"sessions": [info_to_json(info) for info in infos]}
