"""The pieces a runtime needs to run as several worker processes (`proxy.workers > 1`).

The runtime (`proxy/runtime/serve.py`) builds its `WorkerSet` or its `PrimaryLink` with these,
before anything starts: how a worker is started (this program, this config, the bound port), what
the primary welcomes it with, how the primary records a start in its audit log, and the /metrics
registry that serves every worker's metrics labelled `worker`. What crosses processes: each
temporary password the primary issues goes to every worker before the API answers with it
(`WorkerSet.share_secret`); a CancelRequest for another worker's key goes there; the API lists and
ends the sessions of all workers.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from proxy.audit import AuditLog, AuditUnavailable
from proxy.audit.events import WorkerStarted
from proxy.audit.records import worker_audit_path
from proxy.config import ListenAddress, ServerConfig
from proxy.grants.store_watch import FileIdentity
from proxy.workers.channel import Message
from proxy.workers.metrics import WorkerMetrics
from proxy.workers.primary import WorkerSet

log = logging.getLogger(__name__)


def worker_command(config_path: Path, port: Callable[[], int]) -> Callable[[int, int], list[str]]:
    """argv of worker `k` with its channel on `fd`: this program, this config, the bound port
    (read when the worker starts: the primary binds first)."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())

    def command(worker: int, fd: int) -> list[str]:
        return [
            sys.executable, "-m", "proxy", "serve", "--config", str(config_path),
            "--log-level", str(level), "--worker", str(worker), "--channel-fd", str(fd),
            "--port", str(port()),
        ]  # fmt: skip

    return command


def welcome(
    secrets: Callable[[], Iterable[tuple[str, datetime]]],
    mock_secret: bytes,
    state_file: FileIdentity | None,
) -> Callable[[], Message]:
    """What the primary sends a worker first: the live passwords, the mock SCRAM secret, and
    which state file it opened (the worker opens only that one)."""

    def message() -> Message:
        return {
            "secrets": [[password, at.isoformat()] for password, at in secrets()],
            "mock_secret": mock_secret.hex(),
            "state_file": None if state_file is None else list(state_file),
        }

    return message


def record_start(audit: AuditLog, audit_log: Path, replica: str = "") -> Callable[[int, int], None]:
    """The primary's audit record of each worker it starts (`worker.started`)."""

    def started(worker: int, pid: int) -> None:
        audit_file = worker_audit_path(audit_log, worker, replica).name
        try:
            audit.append(WorkerStarted(worker, pid, audit_file))
        except AuditUnavailable as exc:  # the worker's own chain still records its sessions
            log.error("could not record that worker %d started: %s", worker, exc)

    return started


def merged_metrics(own: CollectorRegistry, workers: WorkerSet) -> CollectorRegistry:
    """What /metrics serves on the primary: its own metrics and every worker's."""
    merged = CollectorRegistry(auto_describe=False)
    merged.register(WorkerMetrics(own, workers.metrics_snapshots))
    return merged


def worker_config(config: ServerConfig, port: int) -> ServerConfig:
    """A worker listens where the primary does, on the port it actually bound (0 in tests)."""
    listen = ListenAddress(config.proxy.listen.host, port)
    return replace(config, proxy=replace(config.proxy, listen=listen))
