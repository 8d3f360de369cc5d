"""The API under test: a real `ApiServer` on 127.0.0.1:0, on its own loop in a thread.

No Postgres: the store is a temporary SQLite file, the policy is built in code (swappable like a
reload), the clock is fake, and live sessions are `FakeSession`s in a real `SessionRegistry`.
Tests talk HTTP with `http.client`, so they can send anything — garbage included.

Cast: alice and bob (dev) request; carol and dave (dba) approve orders; frank (finance) approves
billing; erin is an admin and approves nothing; mallory is in the policy and in no group.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from proxy.api.auth import new_token
from proxy.api.context import ApiContext, ProxyAddress
from proxy.api.server import ApiServer
from proxy.config import ListenAddress
from proxy.notify import Notifier, RetryPolicy, notification_failures
from proxy.policy.lifecycle import GrantService
from proxy.policy.models import (
    AccessLevel,
    AccessLevelName,
    ApprovalRule,
    EventKind,
    GroupName,
    Notifications,
    Policy,
    SecretRef,
    Target,
    TargetName,
    Upstream,
    User,
    UserName,
    Webhook,
    WebhookFormat,
)
from proxy.policy.store import SqliteStore
from proxy.session.registry import SessionRegistry
from proxy.session.session import Ending, SessionInfo
from tests.fixtures.clock import FakeClock

T = TypeVar("T")
ORDERS, BILLING = TargetName("orders"), TargetName("billing")
RO, RW = AccessLevelName("read-only"), AccessLevelName("read-write")
PEOPLE: dict[str, tuple[str, ...]] = {
    "alice": ("dev",),
    "bob": ("dev",),
    "carol": ("dba",),
    "dave": ("dba",),
    "erin": ("admins",),
    "frank": ("finance",),
    "mallory": (),
}
FAST_RETRY = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.02, timeout=2.0)


def _groups(*names: str) -> frozenset[GroupName]:
    return frozenset(GroupName(n) for n in names)


def _level(name: AccessLevelName, approval: ApprovalRule | None = None) -> AccessLevel:
    return AccessLevel(name, f"pgw_{name}", SecretRef(env="PGW_UNUSED"), None, approval)


def make_policy(webhooks: tuple[Webhook, ...] = ()) -> Policy:
    """orders: read-only (one dba) and read-write (two dbas); billing: read-only (finance)."""
    upstream = Upstream("db.internal", 5432, "app")
    dba = ApprovalRule(approver_groups=_groups("dba"))
    two_dbas = ApprovalRule(approver_groups=_groups("dba"), required_approvals=2)
    orders = Target(ORDERS, upstream, {RO: _level(RO), RW: _level(RW, two_dbas)},
                    timedelta(hours=4), dba)  # fmt: skip
    finance = ApprovalRule(approver_groups=_groups("finance"))
    billing = Target(BILLING, upstream, {RO: _level(RO)}, timedelta(hours=4), finance)
    return Policy(
        users={UserName(u): User(UserName(u), _groups(*g)) for u, g in PEOPLE.items()},
        targets={ORDERS: orders, BILLING: billing},
        admin_groups=_groups("admins"),
        pending_timeout=timedelta(hours=1),
        notifications=Notifications(webhooks),
    )


def webhook(url: str, form: WebhookFormat = WebhookFormat.GENERIC, *kinds: EventKind) -> Webhook:
    return Webhook(url, None, form, frozenset(kinds or EventKind))


class PolicyBox:
    def __init__(self, policy: Policy) -> None:
        self.current = policy

    def __call__(self) -> Policy:
        return self.current


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return None if error is None else str(error["code"])

    @property
    def message(self) -> str:
        return str(self.body["error"]["message"])


@dataclass(eq=False)
class FakeSession:
    """What the registry and the API need of a live session."""

    info: SessionInfo
    cancel_process_id: int
    cancel_secret: bytes = b"\0\0\0\0"
    ending: Ending | None = None
    _ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def session_id(self) -> str:
        return self.info.session_id

    def terminate(self, ending: Ending) -> None:
        if self.ending is None:
            self.ending = ending
            self._ended.set()

    async def wait_ended(self) -> Ending:
        await self._ended.wait()
        assert self.ending is not None
        return self.ending


class ApiHarness:
    def __init__(self, tmp_path: Path, policy: PolicyBox, clock: FakeClock) -> None:
        self.policy, self.clock = policy, clock
        self.store = SqliteStore(tmp_path / "state.db")
        self.grants = GrantService(self.store, clock, policy)
        self.registry: SessionRegistry[Any] = SessionRegistry()
        self.metrics = CollectorRegistry()
        self.notifier = Notifier(
            policy, clock, FAST_RETRY, failures=notification_failures(self.metrics)
        )
        address = ProxyAddress(ListenAddress("127.0.0.1", 6432))
        self.context = ApiContext(
            self.grants, self.store, policy, clock, self.registry, self.notifier, address,
            [], self.metrics,
        )  # fmt: skip
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = ApiServer(self.context, "127.0.0.1", 0)
        self.run(self.server.start())
        self._tokens: dict[str, str] = {}

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.run(self.server.stop())
        self.run(self.notifier.close(grace=0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
        self.store.close()

    def token(self, user: str) -> str:
        """A (cached) token for `user`, stored as `pgwarden token create` would."""
        if user not in self._tokens:
            secret, record = new_token(UserName(user), self.clock.now())
            with self.store.write() as tx:
                tx.insert_token(record)
            self._tokens[user] = secret
        return self._tokens[user]

    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        user: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """`user`: send that user's token; `raw`: send these bytes as the body, unchanged."""
        sent = dict(headers or {})
        if user is not None:
            sent.setdefault("Authorization", f"Bearer {self.token(user)}")
        data = raw
        if data is None and body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            payload = response.read()
            content_type = response.getheader("Content-Type", "")
            parsed: Any = json.loads(payload) if "json" in content_type else payload.decode()
            return Reply(response.status, parsed, {k.lower(): v for k, v in response.getheaders()})
        finally:
            conn.close()

    # --- shortcuts -----------------------------------------------------------------------------

    def create(self, user: str = "alice", **fields: str) -> Reply:
        body = {"target": "orders", "access_level": "read-only", "duration": "30m",
                "reason": "incident 42", **fields}  # fmt: skip
        return self.call("POST", "/api/v1/requests", body, user=user)

    def act(self, user: str, request_id: str, verb: str, body: object = None) -> Reply:
        return self.call("POST", f"/api/v1/requests/{request_id}/{verb}", body, user=user)

    def active_request(self, user: str = "alice", approver: str = "carol") -> str:
        request_id = str(self.create(user).body["id"])
        assert self.act(approver, request_id, "approve").body["state"] == "active"
        return request_id

    def add_session(self, user: str = "alice", target: str = "orders", level: str = "read-only",
                    session_id: str = "5e55a0", request_id: str = "ab") -> FakeSession:  # fmt: skip
        now = self.clock.now()
        info = SessionInfo(
            session_id, user, target, level, request_id, f"pgw_{level}", "127.0.0.1:5555",
            False, "psql", now, now + timedelta(minutes=30), 4242,
        )  # fmt: skip
        session = FakeSession(info, cancel_process_id=len(self.registry) + 1)
        self.loop.call_soon_threadsafe(self.registry.add, session)
        self.run(asyncio.sleep(0))
        return session


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def policy() -> PolicyBox:
    return PolicyBox(make_policy())


@pytest.fixture
def api(tmp_path: Path, policy: PolicyBox, clock: FakeClock) -> Iterator[ApiHarness]:
    harness = ApiHarness(tmp_path, policy, clock)
    try:
        yield harness
    finally:
        harness.close()


class Receiver:
    """A local webhook receiver: records each POST; answers `statuses` in turn, then 200."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self._statuses = list(statuses)
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    status = receiver._statuses.pop(0) if receiver._statuses else 200
                    receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver._lock.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Any]:
        """The JSON bodies of the first `count` POSTs, once they arrived."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.posts) >= count, timeout):
                raise AssertionError(f"{len(self.posts)} of {count} webhook posts arrived")
            return [json.loads(body) for _, body in self.posts[:count]]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    instance = Receiver()
    try:
        yield instance
    finally:
        instance.close()


def with_webhooks(policy: PolicyBox, *hooks: Webhook) -> None:
    policy.current = replace(policy.current, notifications=Notifications(hooks))


def iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")
