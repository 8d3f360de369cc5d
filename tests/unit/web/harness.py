"""The web console under test, over real HTTP: `ConsoleHarness` and a browser-like `Client`.

`ConsoleHarness` is tests/fixtures/api.py's `ApiHarness` (a real `ApiServer` on 127.0.0.1:0, a
SQLite store, a fake clock, `FakeSession`s) with the console's pages installed as the runtime
installs them (`proxy.web.app.install`): sign-ins go through a real `IdentityAuditor` and the
lifecycle through a real `LifecycleAuditor`, both on a real audit log in the test's directory, so
a test can read what was recorded. `Client` speaks `http.client`, so it can send anything; it
keeps cookies as a browser would, reads a page's CSRF token from its HTML, and follows nothing.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from proxy.audit.log import AuditLog, FsyncPolicy, SinkOptions
from proxy.audit.records import log_files
from proxy.audit.transcript import audit_files
from proxy.grants.requests import Approval, RequestId, Transition
from proxy.grants.store import SqliteStore, Store, StoreTx
from proxy.runtime.auditing import LifecycleAuditor
from proxy.runtime.identity_audit import IdentityAuditor
from proxy.session.session import SessionInfo
from proxy.web.app import install
from proxy.web.deps import ConsoleDeps
from tests.fixtures.api import ApiHarness, FakeSession
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import PolicyBox

AUDIT_KEY = b"console-tests-audit-key-0123456789"
QUIET = SinkOptions(fsync=FsyncPolicy.NEVER, head_interval=3600, retry_interval=0)
FORM = "application/x-www-form-urlencoded"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_UNSET: Any = object()  # post(): read the token from the last page


@dataclass
class Answer:
    status: int
    body: str
    headers: list[tuple[str, str]]  # names lower-cased, repeated ones kept

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    @property
    def location(self) -> str:
        return self.header("location") or ""

    @property
    def set_cookies(self) -> list[str]:
        return [v for k, v in self.headers if k == "set-cookie"]

    @property
    def csrf(self) -> str:
        found = CSRF.search(self.body)
        assert found is not None, f"no form with a CSRF token on this page:\n{self.body[:2000]}"
        return found.group(1)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeRelay:
    busy: bool = False  # running a query: the sessions page says so


@dataclass(eq=False)
class RelayedSession(FakeSession):
    """A `FakeSession` with what the sessions page reads of a live one: its relay."""

    relay: FakeRelay = field(default_factory=FakeRelay)


class Client:
    """One browser: its cookies (by name; paths are the tests' business) and the last page."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.always = dict(headers or {})  # sent with every request (X-Forwarded-Proto...)
        self.last: Answer | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = {**self.always, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            headers_got = [(k.lower(), v) for k, v in response.getheaders()]
        finally:
            conn.close()
        answer = Answer(response.status, text, headers_got)
        self._keep(answer)
        if method == "GET":
            self.last = answer
        return answer

    def _keep(self, answer: Answer) -> None:
        for line in answer.set_cookies:
            jar: SimpleCookie = SimpleCookie()
            jar.load(line)
            for name, morsel in jar.items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)  # deleted, as aiohttp's del_cookie says
                else:
                    self.cookies[name] = morsel.value

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", path, headers=headers)

    def post(
        self,
        path: str,
        fields: dict[str, str] | None = None,
        *,
        csrf: str | None = _UNSET,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """A form POST; `csrf`: the token to send (None: none; default: the last page's)."""
        form = dict(fields or {})
        if csrf is _UNSET:
            assert self.last is not None, "open a page first: its form carries the token"
            csrf = self.last.csrf
        if csrf is not None:
            form["csrf_token"] = csrf
        body = urlencode(form).encode()
        return self.request("POST", path, body, {"Content-Type": FORM, **(headers or {})})

    def sign_in(self, token: str, next_path: str = "") -> Answer:
        self.get("/console/signin")
        return self.post("/console/signin/token", {"token": token, "next": next_path})


class ConsoleHarness:
    """The API harness with the console installed, audited as the runtime audits it."""

    def __init__(self, tmp_path: Path, policy: PolicyBox, clock: FakeClock) -> None:
        self.audit_path = tmp_path / "audit.log"
        self.audit = AuditLog(self.audit_path, AUDIT_KEY, clock=clock, options=QUIET)
        self.lifecycle = LifecycleAuditor(self.audit, policy, wait_durable=False)
        deps = ConsoleDeps(
            IdentityAuditor(self.audit, wait_durable=False), partial(audit_files, self.audit_path)
        )
        self.api = ApiHarness(
            tmp_path, policy, clock, open_store=partial(self._open_store, tmp_path / "state.db"),
            pages=partial(install, deps=deps),
        )  # fmt: skip
        self.policy, self.clock = policy, clock

    def _open_store(
        self,
        path: Path,
        *,
        before_commit: Callable[[StoreTx, list[Transition]], None],
        on_commit: Callable[[list[Transition]], None],
    ) -> Store:
        """The store as the runtime opens it: lifecycle records written ahead of each commit,
        then the harness's own hooks (the notification outbox)."""

        def before(tx: StoreTx, transitions: list[Transition]) -> None:
            self.lifecycle.before_commit(tx, transitions)
            before_commit(tx, transitions)

        def after(transitions: list[Transition]) -> None:
            self.lifecycle.committed(transitions)
            on_commit(transitions)

        return SqliteStore(
            path, before_commit=before, on_commit=after, on_abort=self.lifecycle.aborted
        )

    def close(self) -> None:
        self.api.close()
        self.audit.close()

    @property
    def port(self) -> int:
        return self.api.server.port

    def client(self, user: str | None = None, headers: dict[str, str] | None = None) -> Client:
        """A new browser; signed in with `user`'s API token if one is named."""
        browser = Client(self.port, headers)
        if user is not None:
            signed = browser.sign_in(self.api.token(user))
            assert (signed.status, signed.location) == (303, "/console/"), signed.body[:500]
        return browser

    def records(self, kind: str) -> list[dict[str, Any]]:
        """The audit records of `kind` written so far (each record's body)."""
        found = []
        for file in log_files(self.audit_path):
            for line in file.read_bytes().splitlines():
                body = json.loads(line)
                if body.get("kind") == kind:
                    found.append(body)
        return found

    def approvals(self, request_id: str) -> tuple[Approval, ...]:
        return self.api.grants.approvals(RequestId(request_id))

    def state(self, request_id: str) -> str:
        return self.api.grants.get(RequestId(request_id)).state.value

    def add_session(
        self, request_id: str, user: str = "alice", busy: bool = False
    ) -> RelayedSession:
        """A live session of `user`'s on orders (read-only) under grant `request_id`."""
        now = self.clock.now()
        session_id = f"5e55{len(self.api.registry):04x}"
        info = SessionInfo(
            session_id, user, "orders", "read-only", request_id, "pgw_read-only",
            "127.0.0.1:5555", False, "psql", now, now + timedelta(minutes=30), 4242,
        )  # fmt: skip
        session = RelayedSession(info, len(self.api.registry) + 1, relay=FakeRelay(busy))
        self.api.loop.call_soon_threadsafe(self.api.registry.add, session)
        self.api.run(asyncio.sleep(0))
        return session

    def end_session(self, session: FakeSession) -> None:
        """`session` ends on its own (its client left): it leaves the registry."""
        self.api.loop.call_soon_threadsafe(self.api.registry.remove, session)
        self.api.run(asyncio.sleep(0))

    def pending(self, user: str = "alice", level: str = "read-only", **fields: str) -> str:
        """A new pending request of `user`'s on orders, made through the API."""
        reply = self.api.create(user, access_level=level, **fields)
        assert (reply.status, reply.body["state"]) == (201, "pending"), reply.body
        return str(reply.body["id"])
