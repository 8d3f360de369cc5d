"""Stopping pgwarden while store work is in flight: `Runtime.stop` waits for the threads that
read and write the state store (housekeeping's sweep, the enforcer's reads) before it closes the
store. Cancelling the task that awaits such a call does not stop its thread; closing SQLite under
it crashed the process once (a segfault in CI)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import proxy.runtime.serve as serve_module
from tests.fixtures.pgwarden import PgwardenDeployment, running_pgwarden

pytestmark = pytest.mark.integration

WAIT = 10.0


def test_stop_waits_for_a_sweep_in_flight_before_closing_the_store(
    deployment: PgwardenDeployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve_module, "HOUSEKEEPING_INTERVAL", 0.01)
    running = running_pgwarden(deployment.write_files(tmp_path))
    warden = running.__enter__()
    grants = warden.runtime.grants
    real_sweep = grants.sweep
    inside, release = threading.Event(), threading.Event()
    afterwards: list[object] = []

    def slow_sweep() -> list[object]:
        if inside.is_set():
            return []
        inside.set()
        release.wait(WAIT)
        try:  # the store must still be open: stop has to wait for this call
            afterwards.append(real_sweep())
        except Exception as exc:
            afterwards.append(exc)
        return []

    monkeypatch.setattr(grants, "sweep", slow_sweep)
    assert inside.wait(WAIT)
    stopping = threading.Thread(target=running.__exit__, args=(None, None, None))
    stopping.start()
    time.sleep(0.3)  # without the wait, stop would have closed the store by now
    assert stopping.is_alive()
    release.set()
    stopping.join(WAIT * 3)
    assert not stopping.is_alive()
    assert afterwards == [[]]  # the real sweep ran on an open store and found nothing due
