"""The Slack app's pure parts: Slack's signature check and replay memory, the policy section,
the request message (buttons or a link), the rows an event gets, and Slack failures."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from proxy.api.slack_routes import MAX_REMEMBERED, WINDOW, Replays, signature_problem
from proxy.grants.requests import AccessRequest, RequestId, RequestState
from proxy.notify.events import Event
from proxy.notify.slack_messages import request_message
from proxy.notify.slack_sender import CHANNEL, DM, slack_destinations
from proxy.policy.models import AccessLevelName, ChatApproval, EventKind, TargetName, UserName
from proxy.policy.policy_file import PolicyError, parse_policy

NOW = 1_700_000_000.0
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
# Slack's documented example: the body of a slash command, signed at 1531420618.
SLACK_EXAMPLE_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmi"
    b"bIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_EXAMPLE_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

POLICY = """\
version: 1
users: {alice: {groups: [dev]}, carol: {groups: [dba]}}
targets:
  orders:
    upstream: {host: 127.0.0.1, port: 5432, database: orders}
    max_duration: 4h
    approval: {approvers: {groups: [dba]}}
    access_levels:
      ro: {role: r, password_env: X}
      rw: {role: w, password_env: X, approval: {approvers: {groups: [dba]}, chat: link}}
notifications:
  slack: {bot_token_env: T, signing_secret_file: s.txt, channels: {orders: C0ORDERS},
          users: {carol: UCAROL}}
"""


def _sign(body: bytes, stamp: str, secret: str = SECRET) -> str:
    base = b"v0:" + stamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def test_slacks_own_example_signature_holds() -> None:
    problem = signature_problem(
        SECRET, "1531420618", SLACK_EXAMPLE_SIGNATURE, SLACK_EXAMPLE_BODY, 1531420618.0
    )
    assert problem is None


@pytest.mark.parametrize(
    ("stamp", "signature", "now", "expected"),
    [
        (str(int(NOW)), None, NOW, "missing"),
        (None, "v0=00", NOW, "missing"),
        (str(int(NOW - WINDOW - 1)), "computed", NOW, "old"),
        (str(int(NOW + WINDOW + 1)), "computed", NOW, "old"),
        ("12abc", "computed", NOW, "old"),
        ("9" * 5000, "computed", NOW, "old"),  # a number Python would refuse to parse
        (str(int(NOW)), "v0=" + "0" * 64, NOW, "bad"),
        (str(int(NOW)), "forged", NOW, "bad"),
        (str(int(NOW - WINDOW)), "computed", NOW, None),
    ],
)
def test_signature_problems(
    stamp: str | None, signature: str | None, now: float, expected: str | None
) -> None:
    body = b"payload=%7B%7D"
    if signature == "computed":
        signature = _sign(body, stamp or "")
    elif signature == "forged":
        signature = _sign(body, stamp or "", secret="another secret")
    assert signature_problem(SECRET, stamp, signature, body, now) == expected


def test_a_changed_body_breaks_the_signature() -> None:
    stamp = str(int(NOW))
    signature = _sign(b"payload=a", stamp)
    assert signature_problem(SECRET, stamp, signature, b"payload=b", NOW) == "bad"


def test_replays_are_remembered_for_the_window_and_bounded() -> None:
    replays = Replays()
    assert replays.first_time("v0=a", NOW, NOW) is True
    assert replays.first_time("v0=a", NOW, NOW + 10) is False
    assert replays.first_time("v0=a", NOW, NOW + WINDOW + 1) is True  # forgotten: too old anyway
    for n in range(MAX_REMEMBERED - 1):
        assert replays.first_time(f"v0={n}", NOW + WINDOW + 1, NOW + WINDOW + 1)
    assert replays.first_time("v0=more", NOW + WINDOW + 1, NOW + WINDOW + 1) is None


def test_the_slack_section_is_parsed() -> None:
    policy = parse_policy(POLICY)
    slack = policy.notifications.slack
    assert slack is not None
    assert slack.channel_of("orders") == "C0ORDERS"
    assert slack.user_of("UCAROL") == "carol"
    assert policy.targets[TargetName("orders")].approval.chat is ChatApproval.ALLOW
    level = policy.targets[TargetName("orders")].access_levels[AccessLevelName("rw")]
    assert level.approval is not None
    assert level.approval.chat is ChatApproval.LINK


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("bot_token_env: T", "bot_token: xoxb-1"), "secrets are not allowed"),
        (("{orders: C0ORDERS}", "{orders: general}"), "channel id"),
        (("{orders: C0ORDERS}", "{}"), "needs channel"),
        (("{carol: UCAROL}", "{carol: carol}"), "Slack user id"),
        (("chat: link", "chat: buttons"), "allow, link"),
        (("users:", "user:"), "unknown key"),
    ],
)
def test_a_wrong_slack_section_is_refused(change: tuple[str, str], problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        parse_policy(POLICY.replace(*change))


def _request(level: str, state: RequestState = RequestState.PENDING) -> AccessRequest:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return AccessRequest(
        RequestId("abc123"), UserName("alice"), TargetName("orders"), AccessLevelName(level),
        timedelta(minutes=30), timedelta(minutes=30), "<!channel> fix & go", state, at,
    )  # fmt: skip


def test_a_pending_request_has_buttons_and_its_reason_is_escaped() -> None:
    text, blocks = request_message(_request("ro"), (), parse_policy(POLICY), "https://x/1")
    assert "alice asks for ro on orders" in text
    (actions,) = [b for b in blocks if b["type"] == "actions"]
    assert [(e["action_id"], e["value"]) for e in actions["elements"]] == [
        ("approve", "abc123"), ("deny", "abc123"),
    ]  # fmt: skip
    assert "<!channel>" not in str(blocks)
    assert "&lt;!channel&gt; fix &amp; go" in str(blocks)


def test_a_link_level_has_no_buttons_but_a_link() -> None:
    _, blocks = request_message(_request("rw"), (), parse_policy(POLICY), "https://x/1")
    assert not [b for b in blocks if b["type"] == "actions"]
    assert "web console: <https://x/1|request abc123>" in str(blocks)


def test_a_decided_request_has_no_buttons() -> None:
    _, blocks = request_message(
        _request("ro", RequestState.DENIED), (), parse_policy(POLICY), "https://x/1"
    )
    assert not [b for b in blocks if b["type"] == "actions"]


@pytest.mark.parametrize(
    ("kind", "state", "expected"),
    [
        (EventKind.REQUEST_CREATED, "pending", [CHANNEL]),
        (EventKind.REQUEST_APPROVED, "pending", [CHANNEL]),  # 1 of 2: no DM yet
        (EventKind.REQUEST_APPROVED, "active", [CHANNEL, DM]),
        (EventKind.REQUEST_DENIED, "denied", [CHANNEL, DM]),
        (EventKind.GRANT_EXPIRED, "expired", [CHANNEL, DM]),
        (EventKind.REQUEST_LAPSED, "lapsed", [CHANNEL]),
    ],
)
def test_the_rows_an_event_gets(kind: EventKind, state: str, expected: list[str]) -> None:
    request = {"id": "abc", "requester": "alice", "target": "orders", "access_level": "ro",
               "duration": "30m", "state": state, "ends_at": "2026-01-01T00:30:00Z"}  # fmt: skip
    event = Event(kind, datetime(2026, 1, 1, tzinfo=UTC), "carol", "m", {"request": request})
    assert slack_destinations(event, parse_policy(POLICY)) == expected
    other = parse_policy(POLICY.split("notifications:", maxsplit=1)[0])
    assert slack_destinations(event, other) == []
