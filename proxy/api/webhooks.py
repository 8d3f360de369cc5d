"""Webhook notifications: tell people when a request awaits them, was decided, or ended.

The policy's `notifications.webhooks` (see `policy_file.py`) name where to POST which events. An
event is built where it happens and handed to `Notifier`, which returns at once: each delivery
runs as a background task on the event loop, so neither the proxy nor an API response ever waits
for a webhook. A delivery is retried on a connection error, a timeout, HTTP 5xx or 429, with
exponential backoff, at most `RetryPolicy.attempts` times; any other status is final. A delivery
that fails for good (or is dropped because too many are in flight) is logged without its URL — a
Slack URL is a secret — and counted: `Notifier.failures`, and the Prometheus counter
`pgwarden_notification_failures_total{event}` made by `notification_failures(registry)` in the
runtime's registry.

Bodies: `generic` is pgwarden's JSON document `{"event", "at", "actor", "message", "request" |
"session"}` (the request in the same shape as the HTTP API's); `slack` is an incoming-webhook
body `{"text": message}`, with `&`, `<` and `>` escaped so that a reason cannot mention
`<!channel>`. No body ever carries a password or a token.

Hook points (what calls what):
- `proxy/api/requests_routes.py`, after the lifecycle committed: `request_created`,
  `request_approved`, `request_denied`, `request_revoked`;
- `proxy/api/sessions_routes.py`, when an admin or approver kills a session: `session_killed`;
- for the lead to wire: `grant_expired(request)` wherever an expiry is applied (the result of
  `GrantService.sweep()` in `Runtime._housekeep` is the obvious place; note that a read through
  `GrantService.get` may apply an expiry first, so a sweep alone can miss some), and
  `session_killed(...)` for kills that do not come through the API.
Every event method may be called from the loop's thread or from any other thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from proxy import __version__
from proxy.api.views import request_view, session_view, timestamp
from proxy.clock import Clock
from proxy.grants.requests import AccessRequest, RequestState
from proxy.policy.durations import format_duration
from proxy.policy.models import EventKind, Policy, SecretUnavailable, Webhook, WebhookFormat
from proxy.policy.policy_file import check_webhook_url
from proxy.session.session import SessionInfo

log = logging.getLogger(__name__)

# Deliveries waiting or running at once; beyond this new ones are dropped (and counted), so a
# dead receiver cannot make pgwarden hoard memory.
MAX_IN_FLIGHT = 1000


def notification_failures(registry: CollectorRegistry) -> Counter:
    """The failure counter, registered in `registry` (once per registry)."""
    return Counter(
        "pgwarden_notification_failures_total",
        "Webhook deliveries that failed after every retry, or were dropped",
        ["event"],  # one of models.EventKind: a fixed set
        registry=registry,
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`attempts` tries per delivery; the n-th retry waits `first_delay * 2**(n-1)` seconds, at
    most `max_delay`; each try may take `timeout` seconds."""

    attempts: int = 5
    first_delay: float = 1.0
    max_delay: float = 60.0
    timeout: float = 10.0

    def delay(self, attempt: int) -> float:
        """How long to wait after failed attempt number `attempt` (1-based)."""
        return float(min(self.max_delay, self.first_delay * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, ready to send: a human `message` and a JSON `subject`."""

    kind: EventKind
    at: datetime
    actor: str
    message: str
    subject: dict[str, Any] = field(default_factory=dict)  # {"request": ...} or {"session": ...}

    def body(self, form: WebhookFormat) -> bytes:
        if form is WebhookFormat.SLACK:
            document: dict[str, Any] = {"text": slack_escape(self.message)}
        else:
            document = {
                "event": self.kind.value, "at": timestamp(self.at), "actor": self.actor,
                "message": self.message, **self.subject,
            }  # fmt: skip
        return json.dumps(document, ensure_ascii=False).encode("utf-8")


class Notifier:
    """Builds events and delivers them to the policy's webhooks in the background.

    `sleep` waits out the delay before a retry (a test passes one it holds and releases)."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        clock: Clock,
        retry: RetryPolicy = RetryPolicy(),
        *,
        failures: Counter | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self.retry = retry
        self._failures_metric = failures
        self._sleep = sleep
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.failures = 0  # deliveries given up or dropped by this notifier

    # --- the events -------------------------------------------------------------------------

    def request_created(self, request: AccessRequest) -> None:
        what = _what(request)
        if request.state is RequestState.ACTIVE:
            text = f'{request.requester} got {what} (auto-approved): "{request.reason}"'
        else:
            text = (
                f'{request.requester} asks for {what}: "{request.reason}" '
                f"(request {request.id}; approve with: pgwarden approve {request.id})"
            )
        self._emit(EventKind.REQUEST_CREATED, request.requester, text, request)

    def request_approved(
        self, request: AccessRequest, approver: str, comment: str, received: int, required: int
    ) -> None:
        text = (
            f"{approver} approved {request.requester}'s request {request.id} for {_what(request)}"
        )
        if request.state is RequestState.ACTIVE and request.ends_at is not None:
            text += f"; active until {request.ends_at:%H:%M:%S} UTC"
        else:
            text += f" ({received} of {required} approvals)"
        text += f': "{comment}"' if comment else ""
        self._emit(EventKind.REQUEST_APPROVED, approver, text, request)

    def request_denied(self, request: AccessRequest, actor: str, reason: str) -> None:
        text = f"{actor} denied {request.requester}'s request {request.id} for {_what(request)}"
        self._emit(EventKind.REQUEST_DENIED, actor, text + _quoted(reason), request)

    def request_revoked(self, request: AccessRequest, actor: str, reason: str) -> None:
        text = f"{actor} revoked {request.requester}'s {_what(request)} (request {request.id})"
        self._emit(EventKind.REQUEST_REVOKED, actor, text + _quoted(reason), request)

    def grant_expired(self, request: AccessRequest) -> None:
        at = request.closed_at or request.ends_at
        when = f" at {at:%H:%M:%S} UTC" if at is not None else ""
        text = f"{request.requester}'s {_what(request)} expired{when} (request {request.id})"
        self._emit(EventKind.GRANT_EXPIRED, "<pgwarden>", text, request)

    def session_killed(self, info: SessionInfo, actor: str, reason: str) -> None:
        text = (
            f"{actor} ended {info.user}'s session {info.session_id} on {info.target} "
            f"({info.access_level})" + _quoted(reason)
        )
        event = Event(
            EventKind.SESSION_KILLED, self._clock.now(), actor, text,
            {"session": session_view(info), "reason": reason},
        )  # fmt: skip
        self.emit(event)

    # --- delivery ---------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Schedule `event` for every webhook that wants it; returns at once, from any thread."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and self._loop is None:
            self._loop = running
        if running is not None and running is self._loop:
            self._schedule(event)
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._schedule, event)
        else:
            log.warning("notification %s dropped: no event loop is running", event.kind)
            self._fail(event.kind)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on `loop` (so that events from other threads can be emitted before the first
        event from the loop's own thread)."""
        self._loop = loop

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` s for the deliveries in flight (tests; shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def close(self, grace: float = 2.0) -> None:
        """Give deliveries in flight `grace` seconds, cancel the rest, close the HTTP client."""
        await self.drain(grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _emit(self, kind: EventKind, actor: str, text: str, request: AccessRequest) -> None:
        event = Event(kind, self._clock.now(), actor, text, {"request": request_view(request)})
        self.emit(event)

    def _schedule(self, event: Event) -> None:
        for index, hook in enumerate(self._policy().notifications.webhooks):
            if event.kind not in hook.events:
                continue
            if len(self._tasks) >= MAX_IN_FLIGHT:
                log.error("notification %s to webhook #%d dropped: too many in flight",
                          event.kind, index + 1)  # fmt: skip
                self._fail(event.kind)
                continue
            task = asyncio.get_running_loop().create_task(self._deliver(index, hook, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, index: int, hook: Webhook, event: Event) -> None:
        name = f"webhook #{index + 1} ({hook.describe()})"
        try:
            url = _resolve(hook)
        except ValueError as exc:
            log.error("notification %s to %s not sent: %s", event.kind, name, exc)
            self._fail(event.kind)
            return
        body = event.body(hook.format)
        why = ""
        for attempt in range(1, self.retry.attempts + 1):
            retryable, why = await self._post(url, body)
            if not why:
                return
            if not retryable or attempt == self.retry.attempts:
                break
            log.info("notification %s to %s failed (%s); retrying", event.kind, name, why)
            await self._sleep(self.retry.delay(attempt))
        log.error("notification %s to %s failed for good: %s", event.kind, name, why)
        self._fail(event.kind)

    async def _post(self, url: str, body: bytes) -> tuple[bool, str]:
        """One attempt: ("" if delivered, else why) and whether a retry may help."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": f"pgwarden/{__version__}"})
        timeout = aiohttp.ClientTimeout(total=self.retry.timeout)
        headers = {"Content-Type": "application/json"}
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return True, type(exc).__name__
        if 200 <= status < 300:
            return False, ""
        return status >= 500 or status == 429, f"HTTP {status}"

    def _fail(self, kind: EventKind) -> None:
        self.failures += 1
        if self._failures_metric is not None:
            self._failures_metric.labels(kind.value).inc()


def _resolve(hook: Webhook) -> str:
    """The webhook's URL, checked again if it comes from the environment; ValueError if unusable."""
    if hook.url is not None:
        return hook.url
    assert hook.url_secret is not None
    try:
        url = hook.url_secret.read()
    except SecretUnavailable as exc:
        raise ValueError(str(exc)) from exc
    if (problem := check_webhook_url(url)) is not None:
        raise ValueError(f"the URL in {hook.url_secret.describe()} {problem}")
    return url


def slack_escape(text: str) -> str:
    """Slack's three control characters in message text (its mrkdwn is otherwise left alone)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _what(request: AccessRequest) -> str:
    return f"{request.access_level} on {request.target} for {format_duration(request.duration)}"


def _quoted(text: str) -> str:
    return f': "{text}"' if text else ""
