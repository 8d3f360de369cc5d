"""Slack's Web API, through slack_sdk's `AsyncWebClient`: one call, and what its failure means.

`SlackApi.call("chat.postMessage", ...)` makes a client with the bot token of the current policy
(read at each call, so a rotated token needs no reload) and returns Slack's answer, or raises
`SlackFailure` saying whether to try again: on `ratelimited` (HTTP 429, after its `Retry-After`
seconds), on 5xx and Slack's own transient errors, on a connection error or a timeout. Any other
`"ok": false` (`channel_not_found`, `not_authed`...) is final: retrying would not change it.
slack_sdk's own retry handlers are off: the outbox's deliverer retries, with the attempt
recorded in the store, so a restart resumes the wait rather than forgetting it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from proxy.notify.webhooks import retry_after
from proxy.policy.models import SecretUnavailable, SlackSettings

log = logging.getLogger(__name__)

# Slack's errors that say "not now" rather than "never" (its docs, per method).
TRANSIENT: Final = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
DEFAULT_TIMEOUT: Final = 10  # seconds per call; Slack answers in well under one


class SlackFailure(Exception):
    """A call that did not succeed: `why` (Slack's error code or the HTTP status), whether it
    is `retryable`, and how long Slack asked us to wait (`retry_after`, seconds)."""

    def __init__(self, why: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(why)
        self.why, self.retryable, self.retry_after = why, retryable, retry_after


class SlackApi:
    """Calls Slack's Web API as the app of `settings()` (see the module docstring)."""

    def __init__(
        self,
        settings: Callable[[], SlackSettings | None],
        now: Callable[[], datetime],
        timeout: int = DEFAULT_TIMEOUT,
    ) -> None:
        self._settings, self._now, self._timeout = settings, now, timeout

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Slack's answer to `method` (its `"ok": true` document); SlackFailure otherwise."""
        return await self._request(method, json=params)

    async def get(self, method: str, **params: str) -> dict[str, Any]:
        """A read method (`users.info`, `users.lookupByEmail`): its parameters as a query."""
        return await self._request(method, http_verb="GET", params=params)

    async def _request(self, method: str, **how: Any) -> dict[str, Any]:
        client = self._client()
        try:
            response = await client.api_call(method, **how)
        except SlackApiError as exc:
            raise self._failure(exc) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SlackFailure(type(exc).__name__, retryable=True) from None
        except SlackClientError as exc:
            raise SlackFailure(f"slack_sdk: {exc}") from None
        data = response.data
        return data if isinstance(data, dict) else {}

    def _client(self) -> AsyncWebClient:
        settings = self._settings()
        if settings is None:
            raise SlackFailure("notifications.slack is no longer in the policy")
        try:
            token = settings.bot_token.read()
        except SecretUnavailable as exc:
            raise SlackFailure(f"no bot token: {exc}") from None
        return AsyncWebClient(
            token=token, base_url=settings.api_url, timeout=self._timeout, retry_handlers=[]
        )

    def _failure(self, exc: SlackApiError) -> SlackFailure:
        response = exc.response
        status = int(getattr(response, "status_code", 0) or 0)
        data = getattr(response, "data", None)
        code = str(data.get("error", "")) if isinstance(data, dict) else ""
        why = code or f"HTTP {status}"
        if status == 429 or code == "ratelimited":
            headers = getattr(response, "headers", None) or {}
            wait = retry_after(headers.get("Retry-After"), self._now())
            return SlackFailure("ratelimited", retryable=True, retry_after=wait)
        return SlackFailure(why, retryable=status >= 500 or code in TRANSIENT)
