"""The policy as typed, immutable values: who exists, what can be asked for, who must approve.

A `Policy` is what `policy_file.py` makes from the admins' YAML after validating it; everything else
(the lifecycle, the proxy's login check, the API) reads these values and never the YAML. A policy is
replaced as a whole on reload, never mutated, so a reader holding one sees a consistent snapshot.

Vocabulary: a *target* is a database people ask access to; an *access level* (e.g. `read-only`) maps
to one upstream role; an *approval rule* says who must approve a request for a level and how many.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import NewType

UserName = NewType("UserName", str)
GroupName = NewType("GroupName", str)
TargetName = NewType("TargetName", str)
AccessLevelName = NewType("AccessLevelName", str)


class UpstreamTlsMode(StrEnum):
    """How pgwarden protects its connection to the real database (libpq's sslmode subset)."""

    DISABLE = "disable"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_FULL = "verify-full"


class SecretUnavailable(Exception):
    """A secret reference names an env var or file that is not there (or is empty)."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives: an environment variable or a file, never inline in the policy."""

    env: str | None = None
    file: Path | None = None

    def read(self) -> str:
        """The secret's value, read at use time so that rotation needs no reload."""
        if self.env is not None:
            value = os.environ.get(self.env, "")
            where = f"environment variable {self.env}"
        else:
            assert self.file is not None
            try:
                value = self.file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise SecretUnavailable(f"cannot read secret file {self.file}: {exc}") from exc
            where = f"file {self.file}"
        if not value:
            raise SecretUnavailable(f"secret {where} is missing or empty")
        return value

    def describe(self) -> str:
        """Where the secret comes from, for messages (never the secret itself)."""
        return f"env {self.env}" if self.env is not None else f"file {self.file}"


@dataclass(frozen=True, slots=True)
class User:
    name: UserName
    groups: frozenset[GroupName] = frozenset()


@dataclass(frozen=True, slots=True)
class Upstream:
    """The real database behind a target. Only the policy decides these; clients never do."""

    host: str
    port: int
    database: str
    tls: UpstreamTlsMode = UpstreamTlsMode.PREFER
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ControlRole:
    """A role with `pg_signal_backend`, to terminate backends that outlive their grant."""

    role: str
    password: SecretRef


@dataclass(frozen=True, slots=True)
class AutoApproval:
    """Requests matching this rule become active without a human approver.

    A request matches when its requester is one of `users` or in one of `groups`, its access level
    is in `access_levels`, and its duration is at most `max_duration`.
    """

    access_levels: frozenset[AccessLevelName]
    max_duration: timedelta
    users: frozenset[UserName] = frozenset()
    groups: frozenset[GroupName] = frozenset()


class ChatApproval(StrEnum):
    """Whether chat messages (Slack) may carry Approve / Deny buttons for a rule's requests."""

    ALLOW = "allow"  # buttons: an approval from chat counts
    LINK = "link"  # no buttons: a link to where approving needs a fresh sign-in


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """Who may approve, and how many distinct approvers it takes."""

    approver_users: frozenset[UserName] = frozenset()
    approver_groups: frozenset[GroupName] = frozenset()
    required_approvals: int = 1
    require_reason: bool = True
    auto_approve: tuple[AutoApproval, ...] = ()
    chat: ChatApproval = ChatApproval.ALLOW


@dataclass(frozen=True, slots=True)
class AccessLevel:
    """One way to access a target, e.g. `read-only`, mapped to one upstream role."""

    name: AccessLevelName
    role: str
    password: SecretRef
    max_duration: timedelta | None = None  # None: the target's maximum applies
    approval: ApprovalRule | None = None  # None: the target's rule applies


@dataclass(frozen=True, slots=True)
class Target:
    """A database that people ask access to."""

    name: TargetName
    upstream: Upstream
    access_levels: Mapping[AccessLevelName, AccessLevel]
    max_duration: timedelta
    approval: ApprovalRule
    description: str = ""
    require_client_tls: bool = False
    control: ControlRole | None = None

    def max_duration_for(self, level: AccessLevelName) -> timedelta:
        """The longest grant this level allows: its own cap, never above the target's."""
        own = self.access_levels[level].max_duration
        return self.max_duration if own is None else min(own, self.max_duration)

    def approval_for(self, level: AccessLevelName) -> ApprovalRule:
        own = self.access_levels[level].approval
        return self.approval if own is None else own


class EventKind(StrEnum):
    """What a webhook can be told about (`proxy/notify` sends them)."""

    REQUEST_CREATED = "request_created"
    REQUEST_APPROVED = "request_approved"
    REQUEST_DENIED = "request_denied"
    REQUEST_REVOKED = "request_revoked"
    REQUEST_LAPSED = "request_lapsed"
    GRANT_EXPIRED = "grant_expired"
    SESSION_KILLED = "session_killed"


class WebhookFormat(StrEnum):
    GENERIC = "generic"  # pgwarden's own JSON document
    SLACK = "slack"  # a Slack incoming-webhook body: {"text": ...}


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where to POST events: an inline `url`, or one read from an environment variable (a Slack
    webhook URL is a secret)."""

    url: str | None
    url_secret: SecretRef | None
    format: WebhookFormat
    events: frozenset[EventKind]

    def describe(self) -> str:
        """For logs and messages: never the URL, which may carry a secret in its path."""
        return self.url_secret.describe() if self.url_secret is not None else "inline url"


@dataclass(frozen=True, slots=True)
class SlackSettings:
    """A Slack app (proxy/notify/slack_*.py): its bot token and signing secret, the channel of
    each target (`channel` for the others), and Slack user ids of pgwarden users (`users`; the
    others are found by their verified email)."""

    bot_token: SecretRef
    signing_secret: SecretRef
    channels: Mapping[TargetName, str] = field(default_factory=dict)
    channel: str | None = None
    users: Mapping[UserName, str] = field(default_factory=dict)
    api_url: str = "https://slack.com/api/"
    console_url: str | None = None  # where `link` levels' requests are approved (its base URL)

    def channel_of(self, target: str) -> str | None:
        return self.channels.get(TargetName(target), self.channel)

    def user_of(self, slack_id: str) -> UserName | None:
        """The pgwarden user mapped explicitly to `slack_id`, if any."""
        return next((user for user, known in self.users.items() if known == slack_id), None)


@dataclass(frozen=True, slots=True)
class Notifications:
    webhooks: tuple[Webhook, ...] = ()
    slack: SlackSettings | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """The whole policy: one immutable snapshot."""

    users: Mapping[UserName, User]
    targets: Mapping[TargetName, Target]
    admin_groups: frozenset[GroupName] = frozenset()
    pending_timeout: timedelta = timedelta(hours=1)
    source: str = field(default="", compare=False)  # file it came from, for messages
    notifications: Notifications = field(default_factory=Notifications)

    def is_admin(self, user: UserName) -> bool:
        known = self.users.get(user)
        return known is not None and bool(known.groups & self.admin_groups)

    def groups_of(self, user: UserName) -> frozenset[GroupName]:
        known = self.users.get(user)
        return frozenset() if known is None else known.groups

    def can_approve(self, user: UserName, rule: ApprovalRule) -> bool:
        """Whether `user` is an eligible approver under `rule` (self-approval is checked apart)."""
        if user not in self.users:
            return False
        return user in rule.approver_users or bool(self.groups_of(user) & rule.approver_groups)

    def level(self, target: TargetName, level: AccessLevelName) -> AccessLevel | None:
        """The access level if the target and level both exist in this policy."""
        known = self.targets.get(target)
        return None if known is None else known.access_levels.get(level)
