"""Slack as an outbox destination: which rows an event gets, and sending one (`SlackSender`).

An event about a request gets up to two rows beside the webhooks' (`slack_destinations`):
`slack:channel`, the message showing the request in its target's channel — posted for the first
event, then updated in place (`chat.update`, by the `ts` kept in the store's `slack_messages`)
with the request as the store holds it when the row is sent; and `slack:dm`, a direct message
to the requester when their request is decided or ends. The deliverer sends each destination's
rows one at a time in order, so the post comes before its updates, and retries a row on
`SlackFailure`s that say so (`Retry-After` of `ratelimited` honoured): see deliverer.py.

The requester's Slack user is the policy's explicit mapping, else the one whose email is their
sign-in email (`users.lookupByEmail`). Someone with neither gets no DM: that is not a failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from typing import Any, Final, TypeVar

from proxy.grants.requests import AccessRequest, Approval, RequestId
from proxy.grants.store import Store
from proxy.notify.events import Event, slack_escape
from proxy.notify.slack_api import SlackApi, SlackFailure
from proxy.notify.slack_messages import request_message
from proxy.notify.slack_reminders import DM, REMINDER, reminder_text
from proxy.notify.webhooks import Attempt
from proxy.policy.models import EventKind, Policy, SlackSettings, UserName

log = logging.getLogger(__name__)
T = TypeVar("T")

CHANNEL: Final = "slack:channel"
_REQUEST_EVENTS: Final = frozenset(EventKind) - {EventKind.SESSION_KILLED}
_DECIDED: Final = frozenset({"active", "denied", "revoked", "expired"})


def slack_destinations(event: Event, policy: Policy) -> list[str]:
    """The Slack rows `event` gets under `policy`: none without `notifications.slack`."""
    slack, request = policy.notifications.slack, event.subject.get("request")
    if slack is None or event.kind not in _REQUEST_EVENTS or not isinstance(request, dict):
        return []
    found = [CHANNEL] if slack.channel_of(str(request["target"])) is not None else []
    if _dm_text(event.kind.value, request) is not None:
        found.append(DM)
    return found


def is_slack(destination: str) -> bool:
    return destination in (CHANNEL, DM)


class SlackSender:
    """Sends one `slack:*` outbox row: an `Attempt` as the webhook client makes."""

    def __init__(
        self, api: SlackApi, store: Store, policy: Callable[[], Policy], executor: Executor
    ) -> None:
        self._api, self._store, self._policy, self._executor = api, store, policy, executor

    async def send(self, destination: str, kind: str, body: str) -> Attempt:
        document = json.loads(body)
        settings = self._policy().notifications.slack
        if settings is None:
            return Attempt("notifications.slack is no longer in the policy")
        try:
            if destination == CHANNEL:
                await self._show(RequestId(document["request"]["id"]), settings)
            else:
                await self._tell(kind, document, settings)
        except SlackFailure as exc:
            return Attempt(exc.why or "failed", exc.retryable, exc.retry_after)
        return Attempt()

    async def _show(self, request_id: RequestId, settings: SlackSettings) -> None:
        """Post the request's message, or update the one posted before."""
        request, approvals, posted = await self._blocking(self._read, request_id)
        policy = self._policy()
        link = f"{(settings.console_url or '').rstrip('/')}/console/requests/{request.id}"
        text, blocks = request_message(request, approvals, policy, link)
        if posted is not None:
            channel, ts = posted
            await self._api.call("chat.update", channel=channel, ts=ts, text=text, blocks=blocks)
            return
        room = settings.channel_of(request.target)
        if room is None:
            raise SlackFailure(f"no channel for target {request.target}")
        answer = await self._api.call("chat.postMessage", channel=room, text=text, blocks=blocks)
        ts, where = str(answer.get("ts", "")), str(answer.get("channel") or room)
        if ts:
            await self._blocking(self._remember, request.id, where, ts)

    async def _tell(self, kind: str, document: dict[str, Any], settings: SlackSettings) -> None:
        """The requester's DM (a decision, an end, a reminder), if they have a Slack user."""
        request = document["request"]
        if kind == REMINDER:
            text: str | None = reminder_text(request, float(document["ends_in"]))
        else:
            text = _dm_text(kind, request)
        user = await self.slack_user(UserName(str(request["requester"])), settings)
        if text is None or user is None:
            log.info("no Slack DM for %s's request %s: no Slack user known",
                     request["requester"], request["id"])  # fmt: skip
            return
        opened = await self._api.call("conversations.open", users=user)
        channel = (opened.get("channel") or {}).get("id")
        if not channel:
            raise SlackFailure("conversations.open returned no channel")
        await self._api.call("chat.postMessage", channel=channel, text=text)

    async def slack_user(self, user: UserName, settings: SlackSettings) -> str | None:
        """The Slack user id of pgwarden `user`: mapped, else by sign-in email; None if neither."""
        if (mapped := settings.users.get(user)) is not None:
            return mapped
        email = await self._blocking(self._email, user)
        if not email:
            return None
        try:
            found = await self._api.get("users.lookupByEmail", email=email)
        except SlackFailure as exc:
            if exc.why == "users_not_found":
                return None
            raise
        return str((found.get("user") or {}).get("id") or "") or None

    def _read(
        self, request_id: RequestId
    ) -> tuple[AccessRequest, tuple[Approval, ...], tuple[str, str] | None]:
        with self._store.read() as tx:
            request = tx.get_request(request_id)
            if request is None:
                raise SlackFailure(f"request {request_id} is not in the store")
            return request, tx.approvals(request_id), tx.slack_message(request_id)

    def _remember(self, request_id: RequestId, channel: str, ts: str) -> None:
        with self._store.write() as tx:
            tx.put_slack_message(request_id, channel, ts)

    def _email(self, user: UserName) -> str | None:
        with self._store.read() as tx:
            person = tx.person(user)
        return None if person is None else person.email

    async def _blocking(self, work: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(work, *args))


def _dm_text(kind: str, request: dict[str, Any]) -> str | None:
    """The requester's DM for an event of `kind` about `request` (its view, as the event saw
    it), or None: they are told of the decision and of the end, not of each approval."""
    state = str(request.get("state"))
    if state not in _DECIDED or kind in (EventKind.REQUEST_LAPSED, EventKind.SESSION_KILLED):
        return None
    if kind in (EventKind.REQUEST_APPROVED, EventKind.REQUEST_CREATED) and state != "active":
        return None
    what = slack_escape(
        f"Your request {request['id']} for {request['access_level']} on {request['target']} "
        f"for {request['duration']}"
    )
    by = slack_escape(f" by {request['closed_by']}") if request.get("closed_by") else ""
    why = slack_escape(f': "{request["close_reason"]}"') if request.get("close_reason") else ""
    if state == "active":
        return (
            f"{what} was approved; it is active until {request['ends_at']}. "
            f"Get a password with: pgwarden credentials {request['id']}"
        )
    return f"{what} was {state}{by}{why}" if state != "expired" else f"{what} has expired"
