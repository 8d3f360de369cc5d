"""Two `pgwarden serve` replicas on one PostgreSQL state store, sending webhooks (issue 17).

Exactly one leads (`pgwarden_leader`), and only it sweeps; notifications written while a
receiver fails are delivered after a restart; kill -9 of the leader during a burst of 20
notifications: the other takes over within seconds, and the receiver gets every event, none
twice but the one a dead leader may have sent without marking (the documented window).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fixtures.pg_state import PgState
from tests.fixtures.pgwarden import PgwardenDeployment, port_from_log
from tests.fixtures.replicas import until
from tests.fixtures.served import API_LISTENING, PROXY_LISTENING, Served

TAKEOVER_BOUND = 10.0  # seconds: "another takes over within a few seconds"
DELIVERY_BOUND = 60.0  # seconds for every event to arrive (retries back off up to 8 s)


class Inbox:
    """A webhook receiver: records (event id, kind, status answered); answers `status`, after
    `delay` seconds (a slow receiver keeps a burst in flight)."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status, self.delay = status, delay
        self.seen: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.headers["Idempotency-Key"] == body["id"]
                time.sleep(inbox.delay)
                status = inbox.status
                with inbox._lock:
                    inbox.seen.append((body["id"], body["event"], status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,))
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def accepted(self) -> list[str]:
        """Event ids answered with 200, in arrival order (duplicates included)."""
        with self._lock:
            return [event_id for event_id, _, status in self.seen if status == 200]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@dataclass
class Pair:
    """Replicas `a` and `b`: their config files, and the processes while they run."""

    configs: dict[str, Path]
    running: dict[str, Served] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def start(self, name: str) -> Served:
        config = self.configs[name]
        log = config.parent / f"serve-{time.monotonic_ns()}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
                stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy(),
            )  # fmt: skip
        proxy_port = port_from_log(PROXY_LISTENING, log, process)
        api_port = port_from_log(API_LISTENING, log, process)
        served = Served(config, config.parent, process, log, proxy_port, api_port, self.tokens)
        self.running[name] = served
        return served

    def stop(self, name: str) -> None:
        served = self.running.pop(name)
        if served.process.poll() is None:
            served.process.terminate()
        served.process.wait(30)

    def leaders(self) -> dict[str, float]:
        return {name: gauge(s, "pgwarden_leader") for name, s in self.running.items()}


def gauge(served: Served, name: str) -> float | None:
    """A metric without labels from the replica's /metrics (None if it does not answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.api_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return None
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    made = Inbox()
    yield made
    made.close()


@pytest.fixture
def pair(
    deployment: PgwardenDeployment, pg_state: PgState, inbox: Inbox, tmp_path: Path
) -> Iterator[Pair]:
    configs = {}
    for name in ("a", "b"):
        directory = tmp_path / name
        directory.mkdir()
        config = deployment.write_files(directory, state=pg_state)
        config.write_text(config.read_text() + f"  replica: {name}\n")
        with (directory / "policy.yaml").open("a") as policy:
            policy.write(f"notifications:\n  webhooks:\n    - {{url: '{inbox.url}'}}\n")
        configs[name] = config
    made = Pair(configs)
    try:
        yield made
    finally:
        for name in list(made.running):
            made.stop(name)


def create(served: Served, reason: str, duration: str = "30m") -> str:
    status, body = served.call("POST", "/api/v1/requests", "alice", {
        "target": "orders", "access_level": "read-only", "duration": duration, "reason": reason,
    })  # fmt: skip
    assert status == 201, body
    return str(body["id"])


def test_exactly_one_replica_leads_and_only_it_sweeps(pair: Pair, inbox: Inbox) -> None:
    a, b = pair.start("a"), pair.start("b")
    assert until(lambda: sorted(pair.leaders().values()) == [0.0, 1.0], TAKEOVER_BOUND)
    leader = next(name for name, value in pair.leaders().items() if value == 1.0)
    request_id = create(a, "expires soon", duration="2s")
    status, _ = b.call("POST", f"/api/v1/requests/{request_id}/approve", "carol", {})
    assert status == 200
    assert until(lambda: "grant_expired" in [kind for _, kind, _ in inbox.seen], 30)
    # The expiry was applied (and audited) by the replica that sweeps: the leader alone.
    for name, served in pair.running.items():
        audited = (served.config.parent / f"audit.{name}.jsonl").read_text()
        assert ("grant.expired" in audited) == (name == leader), name


def test_notifications_left_undelivered_are_delivered_after_a_restart(
    pair: Pair, inbox: Inbox
) -> None:
    inbox.status = 503
    a = pair.start("a")
    for n in range(3):
        create(a, f"before the restart {n}")
    assert until(lambda: len(inbox.seen) >= 1, 30)  # the first row tried and refused
    pair.stop("a")  # none delivered: the first waits for its retry, the others behind it
    refused = {event_id for event_id, _, _ in inbox.seen}
    inbox.status = 200
    pair.start("a")
    assert until(lambda: len(set(inbox.accepted())) == 3, DELIVERY_BOUND)
    accepted = inbox.accepted()
    assert len(accepted) == 3  # each once
    assert refused <= set(accepted)
    assert {kind for _, kind, status in inbox.seen if status == 200} == {"request_created"}


def test_kill_9_of_the_leader_during_a_burst_loses_no_event(pair: Pair, inbox: Inbox) -> None:
    inbox.delay = 0.05  # a burst stays in flight for a second
    pair.start("a")
    pair.start("b")
    assert until(lambda: sorted(pair.leaders().values()) == [0.0, 1.0], TAKEOVER_BOUND)
    leader = next(name for name, value in pair.leaders().items() if value == 1.0)
    other = "b" if leader == "a" else "a"
    for n in range(10):
        create(pair.running[leader if n % 2 else other], f"burst {n}")
    killed_at = time.monotonic()
    os.kill(pair.running[leader].process.pid, signal.SIGKILL)
    pair.running.pop(leader).process.wait(30)
    for n in range(10, 20):
        create(pair.running[other], f"burst {n}")
    assert until(lambda: pair.leaders()[other] == 1.0, TAKEOVER_BOUND, every=0.02)
    took_over = time.monotonic() - killed_at
    print(f"leader failover after kill -9: {took_over:.2f} s")
    assert until(lambda: len(set(inbox.accepted())) == 20, DELIVERY_BOUND)
    accepted = inbox.accepted()
    print(f"duplicates after the kill: {len(accepted) - len(set(accepted))}")
    assert len(accepted) - len(set(accepted)) <= 1  # at most the one in flight at the kill
