"""Wiring a `Runtime` into a server of several worker processes (`proxy.workers > 1`).

The primary (`start_workers`) starts the others with its own config file and bound port, and
connects what crosses processes: each temporary password it issues goes to every worker before
the API answers with it; a CancelRequest it receives for another worker's key goes there; the
API lists and ends the sessions of all workers; /metrics serves every worker's metrics, labelled
`worker`. A worker (`link_to_primary`) takes the primary's secrets before it listens.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from proxy.audit import AuditUnavailable
from proxy.audit.events import WorkerStarted
from proxy.audit.records import worker_audit_path
from proxy.config import ListenAddress, ServerConfig
from proxy.grants.requests import IssuedCredential
from proxy.workers.channel import Message
from proxy.workers.link import PrimaryLink
from proxy.workers.metrics import WorkerMetrics
from proxy.workers.primary import WorkerSet

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Callable

    from proxy.runtime.serve import Runtime


def worker_command(config_path: Path, port: int) -> Callable[[int, int], list[str]]:
    """argv of worker `k` with its channel on `fd`: this program, this config, the bound port."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())

    def command(worker: int, fd: int) -> list[str]:
        return [
            sys.executable, "-m", "proxy", "serve", "--config", str(config_path),
            "--log-level", str(level), "--worker", str(worker), "--channel-fd", str(fd),
            "--port", str(port),
        ]  # fmt: skip

    return command


def start_workers(runtime: Runtime, config_path: Path, port: int) -> WorkerSet:
    """The primary's WorkerSet, hooked into its grants, listener, API and /metrics."""
    ctx = runtime.server.ctx
    loop = asyncio.get_running_loop()

    def welcome() -> Message:
        secrets = [[password, at.isoformat()] for password, at in runtime.redact.entries()]
        return {"secrets": secrets, "mock_secret": ctx.mock_secret.hex()}

    def cancel_here(process_id: int, secret: bytes) -> None:
        session = ctx.registry.find_by_cancel_key(process_id, secret)
        if session is not None:
            session.cancel_running_query()

    def started(worker: int, pid: int) -> None:
        audit_file = worker_audit_path(runtime.config.paths.audit_log, worker).name
        try:
            runtime.audit.append(WorkerStarted(worker, pid, audit_file))
        except AuditUnavailable as exc:  # the worker's own chain still records its sessions
            log.error("could not record that worker %d started: %s", worker, exc)

    workers = WorkerSet(
        runtime.config.proxy.workers, worker_command(config_path, port), welcome, cancel_here,
        monotonic=runtime.clock.monotonic, started=started,
    )  # fmt: skip
    issued_here = runtime.grants.on_credential

    def on_credential(issued: IssuedCredential) -> None:
        if issued_here is not None:
            issued_here(issued)
        # Issued on an API thread; queued ahead of the API's answer on the loop (FIFO), so every
        # worker has the password before the person who asked for it does.
        loop.call_soon_threadsafe(
            lambda: workers.broadcast(
                "secret", password=issued.password, expires_at=issued.expires_at.isoformat()
            )
        )

    runtime.grants.on_credential = on_credential
    ctx.cancel_elsewhere = workers.route_cancel
    runtime.api.context.workers = workers
    runtime.api.context.readiness_checks.append(workers.problems)
    merged = CollectorRegistry(auto_describe=False)
    merged.register(WorkerMetrics(runtime.metrics_registry, workers.metrics_snapshots))
    runtime.api.context.metrics = merged
    return workers


def worker_config(config: ServerConfig, port: int) -> ServerConfig:
    """A worker listens where the primary does, on the port it actually bound (0 in tests)."""
    listen = ListenAddress(config.proxy.listen.host, port)
    return replace(config, proxy=replace(config.proxy, listen=listen))


async def link_to_primary(runtime: Runtime, fd: int, stop: Callable[[], None]) -> None:
    """Connect a worker runtime to its primary and take the welcome (before it listens)."""
    ctx = runtime.server.ctx

    def remember(password: str, expires_at: datetime) -> None:
        runtime.redact.remember_password(password, expires_at, runtime.clock.now())

    link = PrimaryLink(ctx.registry, remember, stop, runtime.policy.reload)
    welcome = await link.connect(fd)
    ctx.mock_secret = bytes.fromhex(str(welcome["mock_secret"]))
    ctx.cancel_elsewhere = link.cancel_elsewhere
    runtime.link = link
