"""What a click in Slack does: Approve, Deny (its modal), through the lifecycle as the API does.

`proxy/api/slack_routes.py` verifies Slack's signature and answers at once; it hands the parsed
payload to `SlackActions.spawn`, which does the work in a task of its own (Slack wants an answer
within 3 seconds, and the work waits on the store and on Slack):

- the Slack user becomes a pgwarden person: the policy's explicit mapping, else the person whose
  sign-in email is the Slack user's *confirmed* email (`users.info`); a person the effective
  policy does not hold is unknown. Unknown: an ephemeral "you are not known to pgwarden", and
  nothing changes;
- Approve calls `GrantService.approve` as the API does (never one's own request, distinct
  approvers, groups counted once: the lifecycle's rules); Deny opens the modal asking why, and
  its submission calls `GrantService.deny`. A refusal is told to the clicker alone (ephemeral),
  with the lifecycle's reason. The channel message is updated through the outbox, by the
  change's own rows, never from here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from typing import Any, Final, TypeVar

from prometheus_client import Counter
from slack_sdk.webhook.async_client import AsyncWebhookClient

from proxy.errors import PgwardenError
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import RequestId
from proxy.grants.store import StateStoreUnavailable, Store
from proxy.notify.slack_api import SlackApi, SlackFailure
from proxy.notify.slack_messages import APPROVE, DENY, DENY_CALLBACK, REASON_BLOCK, deny_modal
from proxy.policy.models import Policy, SlackSettings, UserName

log = logging.getLogger(__name__)
T = TypeVar("T")

WORK_TIMEOUT: Final = 30.0  # seconds for one click's work; Slack's trigger lasts 3
MAX_TASKS: Final = 64  # clicks worked on at once; more are refused (a flood, not people)
UNKNOWN: Final = (
    "You are not known to pgwarden: ask an admin to map your Slack user "
    "(notifications.slack.users) or to sign in to pgwarden once with this email."
)


class SlackActions:
    """Works on verified interactivity payloads (see the module docstring)."""

    def __init__(
        self,
        api: SlackApi,
        grants: GrantService,
        store: Store,
        policy: Callable[[], Policy],
        executor: Executor,
        *,
        refusals: Counter | None = None,
    ) -> None:
        self._api, self._grants, self._store = api, grants, store
        self._policy, self._executor, self._refusals = policy, executor, refusals
        self._tasks: set[asyncio.Task[None]] = set()

    def signing_secret(self) -> str | None:
        """The app's signing secret; None when Slack is not configured (or its secret is
        missing: logged, and every callback refused)."""
        settings = self._policy().notifications.slack
        if settings is None:
            return None
        try:
            return settings.signing_secret.read()
        except Exception as exc:  # SecretUnavailable: say where, not what
            log.error("Slack callbacks refused: %s", exc)
            return None

    def refused(self, reason: str) -> None:
        if self._refusals is not None:
            self._refusals.labels(reason).inc()

    def spawn(self, payload: dict[str, Any]) -> bool:
        """Work on `payload` in the background; False when too many are in flight already."""
        if len(self._tasks) >= MAX_TASKS:
            return False
        task = asyncio.get_running_loop().create_task(self._bounded(payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self, timeout: float) -> None:
        """Wait for the clicks being worked on (tests, shutdown), then cancel what is left."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()

    async def _bounded(self, payload: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(WORK_TIMEOUT):
                await self.handle(payload)
        except (SlackFailure, StateStoreUnavailable, TimeoutError) as exc:
            log.warning("a Slack action was not completed: %s", exc)
        except Exception:
            log.exception("a Slack action failed")

    async def handle(self, payload: dict[str, Any]) -> None:
        settings = self._policy().notifications.slack
        if settings is None:
            return
        kind = payload.get("type")
        if kind == "block_actions":
            await self._clicked(payload, settings)
        elif kind == "view_submission" and payload["view"].get("callback_id") == DENY_CALLBACK:
            await self._deny_submitted(payload, settings)

    async def _clicked(self, payload: dict[str, Any], settings: SlackSettings) -> None:
        action = payload["actions"][0]
        request_id, reply = RequestId(str(action["value"])), payload.get("response_url")
        person = await self.person(str(payload["user"]["id"]), settings)
        if person is None:
            await self._ephemeral(reply, UNKNOWN)
            return
        if action["action_id"] == DENY:
            container = payload.get("container") or {}
            view = deny_modal(request_id, str(container.get("channel_id", "")),
                              str(container.get("message_ts", "")))  # fmt: skip
            await self._api.call("views.open", trigger_id=payload["trigger_id"], view=view)
        elif action["action_id"] == APPROVE:
            said = await self._blocking(self._approve, request_id, person)
            await self._ephemeral(reply, said)

    async def _deny_submitted(self, payload: dict[str, Any], settings: SlackSettings) -> None:
        view = payload["view"]
        where = json.loads(view.get("private_metadata") or "{}")
        reason = view["state"]["values"][REASON_BLOCK][REASON_BLOCK].get("value") or ""
        slack_user = str(payload["user"]["id"])
        person = await self.person(slack_user, settings)
        said, request_id = UNKNOWN, RequestId(str(where["request"]))
        if person is not None:
            said = await self._blocking(self._deny, request_id, person, reason)
        if where.get("channel"):
            await self._api.call(
                "chat.postEphemeral", channel=where["channel"], user=slack_user, text=said
            )

    async def person(self, slack_user: str, settings: SlackSettings) -> UserName | None:
        """The pgwarden person `slack_user` is, or None (see the module docstring)."""
        user = settings.user_of(slack_user)
        if user is None:
            try:
                found = (await self._api.get("users.info", user=slack_user)).get("user") or {}
            except SlackFailure as exc:
                if exc.retryable:
                    raise
                found = {}  # user_not_found, or a user this app may not see: unknown
            email = (found.get("profile") or {}).get("email")
            if not email or found.get("is_email_confirmed") is not True:
                return None
            user = await self._blocking(self._by_email, str(email))
        return user if user is not None and user in self._policy().users else None

    def _approve(self, request_id: RequestId, person: UserName) -> str:
        try:
            before = self._grants.get(request_id)
            if before.requester == person:
                return f"You cannot approve your own request {request_id}: someone else must."
            after = self._grants.approve(request_id, person, "approved in Slack")
        except PgwardenError as exc:
            return f"Not approved: {exc.message}"
        return f"You approved request {request_id}; it is now {after.state.value}."

    def _deny(self, request_id: RequestId, person: UserName, reason: str) -> str:
        if not reason.strip():
            return "Not denied: say why the request is denied."
        try:
            self._grants.deny(request_id, person, reason.strip())
        except PgwardenError as exc:
            return f"Not denied: {exc.message}"
        return f"You denied request {request_id}."

    def _by_email(self, email: str) -> UserName | None:
        with self._store.read() as tx:
            people = tx.people()
        wanted = email.casefold()
        return next(
            (p.user for p in people
             if p.email and p.email.casefold() == wanted and p.removed_at is None),
            None,
        )  # fmt: skip

    async def _ephemeral(self, response_url: object, text: str) -> None:
        """Tell the clicker alone, through the payload's `response_url` (Slack's, signed in)."""
        if not isinstance(response_url, str) or not response_url.startswith(
            ("https://", "http://")
        ):
            log.info("no response_url to tell a Slack user: %s", text)
            return
        answer = await AsyncWebhookClient(response_url).send(
            text=text, response_type="ephemeral", replace_original=False
        )
        if answer.status_code != 200:
            log.warning("Slack's response_url answered HTTP %d", answer.status_code)

    async def _blocking(self, work: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(work, *args))
