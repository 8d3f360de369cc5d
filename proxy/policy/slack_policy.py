"""The policy's `notifications.slack` section: a Slack app that posts requests with buttons.

    notifications:
      slack:
        bot_token_env: VARIABLE | bot_token_file: PATH          # xoxb-..., a secret
        signing_secret_env: VARIABLE | signing_secret_file: PATH # checks Slack's callbacks
        channels: {TARGET: CHANNEL_ID, ...}                      # where each target's requests go
        channel: CHANNEL_ID                                      # the others (at least one of two)
        users: {PGWARDEN_USER: SLACK_USER_ID, ...}               # else found by verified email
        api_url: URL                                             # Slack's Web API (a test's fake)
        console_url: URL                                         # pgwarden's, for `chat: link`

Ids are Slack's (`C0123ABCD`, `U0123ABCD`): a channel *name* can be renamed under us and would
send a request to the wrong room, an id cannot. Parsed as strictly as the rest of the policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Final

from proxy.policy.fields import Fields, check_name, secret_ref
from proxy.policy.models import ChatApproval, SlackSettings, TargetName, UserName

CHANNEL_ID: Final = re.compile(r"[CGD][A-Z0-9]{2,30}")
USER_ID: Final = re.compile(r"[UW][A-Z0-9]{2,30}")
DEFAULT_API_URL: Final = "https://slack.com/api/"


def slack_settings(
    f: Fields | None,
    base_dir: Path | None,
    targets: Collection[str],
    url_check: Callable[[str], str | None],
) -> SlackSettings | None:
    """The section's settings (None when absent or invalid: its problems are recorded)."""
    if f is None:
        return None
    token = secret_ref(f, "bot_token", base_dir)
    signing = secret_ref(f, "signing_secret", base_dir)
    channels = _ids(f, "channels", CHANNEL_ID, "a channel id like C0123ABCD")
    channel = f.string("channel", check=lambda t: _id_problem(t, CHANNEL_ID, "a channel id"))
    users = _ids(f, "users", USER_ID, "a Slack user id like U0123ABCD")
    api_url = f.string("api_url", default=DEFAULT_API_URL, check=url_check)
    console_url = f.string("console_url", check=url_check)
    for name in channels or {}:
        if name not in targets:
            f.problem("channels", f"unknown target {name!r} (targets: {', '.join(targets)})")
    if channels is not None and not channels and channel is None and not f.has("channel"):
        f.problem(None, "needs channel: CHANNEL_ID or channels: {TARGET: CHANNEL_ID}")
    f.finish()
    if token is None or signing is None or channels is None or users is None or not api_url:
        return None
    return SlackSettings(
        token, signing,
        channels={TargetName(k): v for k, v in channels.items()}, channel=channel,
        users={UserName(k): v for k, v in users.items()}, api_url=api_url,
        console_url=console_url,
    )  # fmt: skip


def chat_approval(rule: Fields) -> ChatApproval:
    """An approval rule's `chat: allow | link` (a wrong value is reported; the policy fails)."""
    return rule.choice("chat", ChatApproval, default=ChatApproval.ALLOW) or ChatApproval.ALLOW


def _ids(f: Fields, key: str, pattern: re.Pattern[str], what: str) -> dict[str, str] | None:
    """A mapping of names to Slack ids (empty when absent); None when invalid."""
    if not f.has(key):
        return {}
    section = f.section(key)  # not a mapping, or empty: reported
    written = f.raw(key)
    if section is None or not isinstance(written, Mapping):
        return None
    found: dict[str, str] = {}
    for name in written:
        if not isinstance(name, str):
            continue  # reported by Fields.of
        if (error := check_name(name)) is not None:
            section.problem(name, error)
        value = section.string(name, check=lambda t: _id_problem(t, pattern, what))
        if value is not None and error is None:
            found[name] = value
    section.finish()
    return found if len(found) == len(written) else None


def _id_problem(text: str, pattern: re.Pattern[str], what: str) -> str | None:
    return None if pattern.fullmatch(text) else f"must be {what}, not a name"
