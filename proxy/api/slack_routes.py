"""`POST /api/v1/slack/interactivity`: Slack's callbacks (a click, a modal), verified first.

Public (Slack cannot send a bearer token): a callback is trusted only through Slack's signature,
checked before a byte of the body is parsed. `X-Slack-Request-Timestamp` must be within
`WINDOW` of our clock (an old capture is worthless), and `X-Slack-Signature` must be `v0=` and
the HMAC-SHA256, keyed with the app's signing secret, of `v0:{timestamp}:{raw body}`, compared
in constant time. A signature seen in the window is a replay and refused too (`Replays`: in
memory, per replica; a replay to another replica meets the lifecycle, where a second approval by
the same person changes nothing). Every refusal is a 401 counted in
`pgwarden_slack_requests_refused_total{reason}` (missing, old, bad, replay, too_large, busy).

Then the `payload` form field is parsed and handed to the runtime's Slack handler
(proxy/notify/slack_actions.py), which works in the background: Slack is answered at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import OrderedDict
from typing import Final
from urllib.parse import parse_qs

from aiohttp import web

from proxy.api.context import CONTEXT
from proxy.api.errors import ApiError

PATH: Final = "/api/v1/slack/interactivity"
PUBLIC: Final = frozenset({PATH})
WINDOW: Final = 300.0  # seconds: Slack's own advice for the timestamp check
MAX_BODY: Final = 64 * 1024  # a click's payload with our small message is a few KiB
MAX_REMEMBERED: Final = 10_000  # signatures in one window; more is a flood: refused


class Replays:
    """Signatures seen in the last `WINDOW` seconds (by their timestamp), bounded."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, signature: str, stamp: float, now: float) -> bool | None:
        """True the first time; False for a replay; None when full (refuse: a flood)."""
        while self._seen and next(iter(self._seen.values())) < now - WINDOW:
            self._seen.popitem(last=False)
        if signature in self._seen:
            return False
        if len(self._seen) >= MAX_REMEMBERED:
            return None
        self._seen[signature] = max(stamp, now - WINDOW)
        return True


REPLAYS = web.AppKey("slack_replays", Replays)


def routes() -> list[web.RouteDef]:
    return [web.post(PATH, interactivity)]


def signature_problem(
    secret: str, stamp: str | None, signature: str | None, body: bytes, now: float
) -> str | None:
    """Why Slack's signature does not hold (`missing`, `old`, `bad`), or None."""
    if not stamp or not signature:
        return "missing"
    # At most 12 digits: a timestamp (Python refuses to parse numbers of over 4300 digits).
    if (
        not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12)
        or abs(now - int(stamp)) > WINDOW
    ):
        return "old"
    base = b"v0:" + stamp.encode("ascii") + b":" + body
    expected = "v0=" + hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "replace")):
        return "bad"
    return None


async def interactivity(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    slack = ctx.slack
    secret = None if slack is None else await ctx.blocking(slack.signing_secret)
    if slack is None or secret is None:
        raise ApiError(404, "not_found", "Slack is not configured here (notifications.slack)")
    body = await request.content.read(MAX_BODY + 1)
    now = ctx.clock.now().timestamp()
    stamp = request.headers.get("X-Slack-Request-Timestamp")
    signature = request.headers.get("X-Slack-Signature")
    problem = "too_large" if len(body) > MAX_BODY else None
    problem = problem or signature_problem(secret, stamp, signature, body, now)
    if problem is None:
        fresh = request.app[REPLAYS].first_time(signature or "", float(stamp or 0), now)
        problem = {True: None, False: "replay", None: "busy"}[fresh]
    if problem is not None:
        slack.refused(problem)
        raise ApiError(401, "slack_signature", f"refused: Slack signature {problem}")
    payload = _payload(body)
    if not slack.spawn(payload):
        slack.refused("busy")
        raise ApiError(503, "busy", "too many Slack actions at once; try again")
    return web.Response(status=200)


def _payload(body: bytes) -> dict[str, object]:
    """The `payload` field of the form Slack posts: a JSON object."""
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=10, strict_parsing=True)
        payload = json.loads(fields["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError):
        raise ApiError(400, "invalid_body", "expected Slack's form with a payload") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_body", "expected Slack's payload to be a JSON object")
    return payload
