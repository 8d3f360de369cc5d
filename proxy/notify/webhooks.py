"""Webhooks: where events go (`destination`), and one HTTP attempt to deliver one (`WebhookClient`).

The policy's `notifications.webhooks` (see `policy_file.py`) name where to POST which events. An
outbox row names its webhook by `destination(hook)`: a digest of its URL (or of the environment
variable that holds it) and its format, so that neither the database nor a log ever holds the
URL — a Slack URL is a secret — and a row still finds its webhook after a reload that reorders
them. A row whose webhook left the policy is given up.

An attempt is retryable on a connection error, a timeout, HTTP 5xx or 429; any other status is
final. On 429 and 503 a `Retry-After` (seconds, or an HTTP date) is honoured, up to
`MAX_RETRY_AFTER`. Every POST carries the event's id as `Idempotency-Key`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Final

import aiohttp

from proxy import __version__
from proxy.clock import Clock
from proxy.policy.models import Policy, SecretUnavailable, Webhook
from proxy.policy.policy_file import check_webhook_url

# A receiver that asks for more than this is waited for this long: a hostile or confused one
# cannot park notifications for a day.
MAX_RETRY_AFTER: Final = 900.0
_HONOURS_RETRY_AFTER: Final = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`attempts` tries per delivery; the n-th retry waits `first_delay * 2**(n-1)` seconds, at
    most `max_delay` (or longer, when the receiver asks with Retry-After); each try may take
    `timeout` seconds."""

    attempts: int = 5
    first_delay: float = 1.0
    max_delay: float = 60.0
    timeout: float = 10.0

    def delay(self, attempt: int) -> float:
        """How long to wait after failed attempt number `attempt` (1-based)."""
        return float(min(self.max_delay, self.first_delay * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST came to: delivered (`why` empty), or why not and whether to retry."""

    why: str = ""
    retryable: bool = False
    retry_after: float | None = None  # seconds the receiver asked us to wait

    @property
    def delivered(self) -> bool:
        return not self.why


def destination(hook: Webhook) -> str:
    """The name outbox rows give `hook` (never its URL)."""
    if hook.url is not None:
        where = hook.url
    else:
        assert hook.url_secret is not None
        where = hook.url_secret.describe()
    digest = hashlib.sha256(f"{where}\n{hook.format.value}".encode()).hexdigest()
    return f"webhook:{digest[:24]}"


def find(policy: Policy, name: str) -> tuple[int, Webhook] | None:
    """(index, webhook) of the policy's webhook called `name`, or None."""
    for index, hook in enumerate(policy.notifications.webhooks):
        if destination(hook) == name:
            return index, hook
    return None


def resolve(hook: Webhook) -> str:
    """The webhook's URL, checked again if it comes from the environment; ValueError if unusable."""
    if hook.url is not None:
        return hook.url
    assert hook.url_secret is not None
    try:
        url = hook.url_secret.read()
    except SecretUnavailable as exc:
        raise ValueError(str(exc)) from exc
    if check_webhook_url(url) is not None:  # its words quote the URL: a secret, kept out
        raise ValueError(
            f"the URL in {hook.url_secret.describe()} is not a usable http:// or https:// URL "
            "(not shown: a webhook URL is a secret)"
        )
    return url


class WebhookClient:
    """POSTs bodies; one HTTP client session, made at first use (on the loop), closed by close()."""

    def __init__(self, clock: Clock, timeout: float) -> None:
        self._clock = clock
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: bytes, event_id: str) -> Attempt:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": f"pgwarden/{__version__}"})
        headers = {"Content-Type": "application/json", "Idempotency-Key": event_id}
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as response:  # fmt: skip
                status, asked = response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Attempt(type(exc).__name__, retryable=True)
        if 200 <= status < 300:
            return Attempt()
        wait = retry_after(asked, self._clock.now()) if status in _HONOURS_RETRY_AFTER else None
        return Attempt(f"HTTP {status}", status >= 500 or status == 429, wait)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date), at most
    `MAX_RETRY_AFTER`; None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            seconds = (parsedate_to_datetime(text) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
