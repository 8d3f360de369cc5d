"""The policy file: the admins' YAML, validated strictly and turned into a `models.Policy`.

Everything is checked, and every problem is reported at once with its path in the document
(`targets.orders.access_levels.read-only.role: required (line 14)`): unknown keys at every level,
required fields, types, names, durations, ports, TLS modes, secret references (never an inline
secret), and the references between parts: approvers and auto-approve rules must name users that
exist and groups that someone is in, a rule must be satisfiable (no more required approvals than
distinct eligible approvers), an auto-approve rule must name levels of its target and stay within
their maximum duration. A policy that could never work is rejected here rather than discovered
by the first person who needs access at 3 a.m. With single sign-on (`identity.oidc`: the server
passes `people_from_identity`) people and groups also come from the provider: `users:` may be
left out, rules may name users and groups no YAML user holds (`unheld_names` lists them, for a
warning that still shows a typo), and a quorum is checked only against the users a rule names.

The shape (see `config/policy.example.yaml`):

    version: 1
    admin_groups: [dba]
    pending_timeout: 1h
    users:   {NAME: {groups: [GROUP, ...]}}
    targets:
      NAME:
        description: TEXT
        upstream: {host, port, database, tls, ca_file}
        require_client_tls: BOOL
        max_duration: DURATION
        control: {role, password_env | password_file}
        approval: RULE
        access_levels: {NAME: {role, password_env | password_file, max_duration, approval: RULE}}
    RULE: {approvers: {users, groups}, required_approvals, require_reason, chat: allow | link,
           auto_approve: [{users, groups, access_levels, max_duration}]}
    notifications:  # and slack: {...}, a Slack app with Approve / Deny buttons (slack_policy.py)
      webhooks: [{url: URL | url_env: VARIABLE, format: generic | slack, events: [EVENT, ...]}]

A webhook's URL is http or https, without user:password (a Slack webhook URL is itself a secret:
give it with `url_env`); `events` defaults to all of them (`models.EventKind`).

A level's own `approval` replaces the target's rule for that level as a whole; its auto-approve
rules apply to that level only, so they take no `access_levels`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from proxy.policy.durations import format_duration
from proxy.policy.fields import (
    Fields,
    check_env_name,
    check_host,
    check_pg_identifier,
    check_text,
    secret_ref,
)
from proxy.policy.models import (
    AccessLevel,
    AccessLevelName,
    ApprovalRule,
    AutoApproval,
    ControlRole,
    EventKind,
    GroupName,
    Notifications,
    Policy,
    SecretRef,
    Target,
    TargetName,
    Upstream,
    UpstreamTlsMode,
    User,
    UserName,
    Webhook,
    WebhookFormat,
)
from proxy.policy.slack_policy import chat_approval, slack_settings
from proxy.policy.yaml_strict import DocumentError, Problems, build_document, read_source

POLICY_VERSION = 1
DEFAULT_PENDING_TIMEOUT = timedelta(hours=1)
# More required approvals than this is a typo, not a process.
MAX_REQUIRED_APPROVALS = 10
MAX_URL_LENGTH = 2048  # what browsers and most servers accept; a longer webhook URL is a mistake


class PolicyError(DocumentError):
    """The policy cannot be used; `problems` lists everything that is wrong with it."""


class PolicyUnreadable(PolicyError):
    """The policy file could not be read at all (missing, permissions, a directory)."""


def load_policy(path: Path, *, people_from_identity: bool = False) -> Policy:
    """Read and validate the policy file; relative paths in it are taken from its directory.
    `people_from_identity`: the server signs people in (`identity.oidc`), see the docstring."""
    text = read_source(path, PolicyError, PolicyUnreadable)
    return parse_policy(
        text, str(path), base_dir=path.absolute().parent, people_from_identity=people_from_identity
    )


def parse_policy(
    text: str,
    source: str = "<policy>",
    *,
    base_dir: Path | None = None,
    people_from_identity: bool = False,
) -> Policy:
    """Validate policy YAML; `base_dir` resolves relative paths (None: leave them relative)."""
    return build_document(
        text, source, PolicyError,
        lambda doc, problems: _policy(doc, problems, base_dir, source, people_from_identity),
    )  # fmt: skip


def unheld_names(policy: Policy) -> tuple[frozenset[UserName], frozenset[GroupName]]:
    """The users and groups the rules (and `admin_groups`) name that `users:` does not hold:
    with people from an identity provider, those must come from it; a typo shows up here."""
    held = frozenset(g for user in policy.users.values() for g in user.groups)
    rules = [t.approval for t in policy.targets.values()]
    rules += [lv.approval for t in policy.targets.values() for lv in t.access_levels.values()
              if lv.approval is not None]  # fmt: skip
    users: set[UserName] = set()
    groups: set[GroupName] = set(policy.admin_groups)
    for rule in rules:
        users |= rule.approver_users
        groups |= rule.approver_groups
        for auto in rule.auto_approve:
            users |= auto.users
            groups |= auto.groups
    return frozenset(users - set(policy.users)), frozenset(groups - held)


@dataclass(frozen=True, slots=True)
class _Directory:
    """The users of the policy, for checking the references that rules make to them."""

    users: Mapping[UserName, User]
    # People sign in through an identity provider, which gives their groups: a name the YAML
    # does not hold may be theirs, so it is not an error (`unheld_names` lists them instead).
    open_ended: bool = False

    @property
    def groups(self) -> frozenset[GroupName]:
        return frozenset(g for user in self.users.values() for g in user.groups)

    def eligible(self, rule: ApprovalRule) -> list[UserName]:
        """The distinct users who could approve under `rule` (one person counts once)."""
        return sorted(
            name
            for name, user in self.users.items()
            if name in rule.approver_users or user.groups & rule.approver_groups
        )


@dataclass(frozen=True, slots=True)
class _Scope:
    """Where an approval rule sits: which levels its auto-approve rules may name, and their caps.

    `fixed_level` is set for a level's own rule (its auto-approve rules name no levels);
    `elsewhere` are the target's levels that have their own rule, so the target's rule never
    applies to them.
    """

    caps: Mapping[AccessLevelName, timedelta]
    fixed_level: AccessLevelName | None = None
    elsewhere: frozenset[AccessLevelName] = frozenset()
    broken: frozenset[AccessLevelName] = frozenset()  # invalid, already reported: not re-checked


def _policy(
    document: object, problems: Problems, base_dir: Path | None, source: str, open_ended: bool
) -> Policy | None:
    if document is None:
        problems.add("", "the policy is empty (a half-written file?); it needs at least version: 1")
        return None
    root = Fields.of(document, "", problems)
    if root is None:
        return None
    version = root.integer("version", low=0, high=2**31)
    if version is not None and version != POLICY_VERSION:
        root.problem("version", f"unsupported version {version}; this pgwarden reads version 1")
    admin_groups = root.names("admin_groups")
    pending_timeout = root.duration("pending_timeout", default=DEFAULT_PENDING_TIMEOUT)
    users = _users(root, required=not open_ended)
    directory = _Directory(users or {}, open_ended)
    targets = _targets(root, directory, base_dir)
    notifications = _notifications(root.section_or_empty("notifications"), base_dir, targets or ())
    root.finish()
    if version is None or admin_groups is None or pending_timeout is None:
        return None
    if users is None or targets is None or notifications is None:
        return None
    return Policy(
        users=users,
        targets=targets,
        admin_groups=frozenset(GroupName(g) for g in admin_groups),
        pending_timeout=pending_timeout,
        source=source,
        notifications=notifications,
    )


def _users(root: Fields, *, required: bool) -> dict[UserName, User] | None:
    if not required and not root.has("users"):
        return {}  # everyone signs in through the identity provider
    sections = root.named_sections("users", required=True)
    if sections is None:
        return None
    users: dict[UserName, User] = {}
    for name, fields in sections.items():
        groups = fields.names("groups") or ()
        fields.finish()
        # A user whose entry is invalid still exists for the checks of references to it, so
        # that one mistake is reported once; the policy is rejected anyway.
        users[UserName(name)] = User(UserName(name), frozenset(GroupName(g) for g in groups))
    return users


def _targets(
    root: Fields, directory: _Directory, base_dir: Path | None
) -> dict[TargetName, Target] | None:
    sections = root.named_sections("targets", required=True)
    if sections is None:
        return None
    targets = {
        TargetName(n): _target(TargetName(n), f, directory, base_dir) for n, f in sections.items()
    }
    return {name: target for name, target in targets.items() if target is not None}


def _target(
    name: TargetName, f: Fields, directory: _Directory, base_dir: Path | None
) -> Target | None:
    description = f.string("description", default="", check=check_text)
    upstream_fields = f.section("upstream", required=True)
    up = _upstream(upstream_fields, base_dir) if upstream_fields else None
    require_client_tls = f.boolean("require_client_tls", default=False)
    max_duration = f.duration("max_duration", required=True)
    control_fields = f.section("control")
    control = _control(control_fields, base_dir) if control_fields else None
    levels = _levels(f, max_duration, directory, base_dir)
    approval_fields = f.section("approval", required=True)
    scope = _target_scope(levels, max_duration)
    approval = _approval(approval_fields, directory, scope) if approval_fields else None
    f.finish()
    valid = {n: lv for n, lv in levels.items() if lv is not None}
    if control_fields is not None and control is None:
        return None
    if up is None or max_duration is None or approval is None or len(valid) < len(levels):
        return None
    if description is None or require_client_tls is None:
        return None
    return Target(name, up, valid, max_duration, approval, description, require_client_tls, control)


def _target_scope(
    levels: Mapping[AccessLevelName, AccessLevel | None], cap: timedelta | None
) -> _Scope:
    valid = {n: lv for n, lv in levels.items() if lv is not None}
    own_rule = frozenset(n for n, lv in valid.items() if lv.approval is not None)
    caps = {n: _cap(lv, cap) for n, lv in valid.items() if n not in own_rule}
    return _Scope(caps, elsewhere=own_rule, broken=frozenset(levels) - frozenset(valid))


def _cap(level: AccessLevel, target_cap: timedelta | None) -> timedelta:
    caps = [c for c in (level.max_duration, target_cap) if c is not None]
    return min(caps) if caps else timedelta.max


def _upstream(f: Fields, base_dir: Path | None) -> Upstream | None:
    host = f.string("host", required=True, check=check_host)
    port = f.integer("port", default=5432, low=1, high=65535)
    database = f.string("database", required=True, check=check_pg_identifier)
    tls = f.choice("tls", UpstreamTlsMode, default=UpstreamTlsMode.PREFER)
    ca_file = f.path_value("ca_file", base_dir)
    if ca_file is not None and tls in (UpstreamTlsMode.DISABLE, UpstreamTlsMode.PREFER):
        f.problem("ca_file", "is only used with tls: require or verify-full")
    f.finish()
    if host is None or port is None or database is None or tls is None:
        return None
    return Upstream(host, port, database, tls, ca_file)


def _control(f: Fields, base_dir: Path | None) -> ControlRole | None:
    role = f.string("role", required=True, check=check_pg_identifier)
    password = secret_ref(f, "password", base_dir)
    f.finish()
    return ControlRole(role, password) if role is not None and password is not None else None


def _levels(
    target: Fields, target_cap: timedelta | None, directory: _Directory, base_dir: Path | None
) -> dict[AccessLevelName, AccessLevel | None]:
    """Every level declared, `None` for one that is invalid (its problems are recorded)."""
    sections = target.named_sections("access_levels", required=True)
    if sections is not None and not sections:
        target.problem("access_levels", "a target needs at least one access level")
    return {
        AccessLevelName(name): _level(
            AccessLevelName(name), fields, target_cap, directory, base_dir
        )
        for name, fields in (sections or {}).items()
    }


def _level(
    name: AccessLevelName,
    f: Fields,
    target_cap: timedelta | None,
    directory: _Directory,
    base_dir: Path | None,
) -> AccessLevel | None:
    role = f.string("role", required=True, check=check_pg_identifier)
    password = secret_ref(f, "password", base_dir)
    max_duration = f.duration("max_duration")
    if max_duration and target_cap and max_duration > target_cap:
        f.problem(
            "max_duration",
            f"{_fmt(max_duration)} is above the target's max_duration of {_fmt(target_cap)}",
        )
    approval_fields = f.section("approval")
    approval = None
    if approval_fields is not None:
        cap = min(max_duration or timedelta.max, target_cap or timedelta.max)
        approval = _approval(approval_fields, directory, _Scope({name: cap}, fixed_level=name))
    f.finish()
    if role is None or password is None or (approval_fields is not None and approval is None):
        return None
    return AccessLevel(name, role, password, max_duration, approval)


def _approval(f: Fields, directory: _Directory, scope: _Scope) -> ApprovalRule | None:
    approvers = f.section("approvers", required=True)
    users, groups = _people(approvers, directory, "approve") if approvers else ((), ())
    if approvers is not None:
        approvers.finish()
    required = f.integer("required_approvals", default=1, low=1, high=MAX_REQUIRED_APPROVALS)
    require_reason = f.boolean("require_reason", default=True)
    chat = chat_approval(f)  # Slack buttons, or a link
    autos = [_auto(a, directory, scope) for a in f.section_list("auto_approve")]
    f.finish()
    if approvers is None or users is None or groups is None or required is None:
        return None
    rule = ApprovalRule(
        approver_users=frozenset(UserName(u) for u in users),
        approver_groups=frozenset(GroupName(g) for g in groups),
        required_approvals=required,
        require_reason=bool(require_reason),
        auto_approve=tuple(a for a in autos if a is not None),
        chat=chat,
    )
    _check_satisfiable(f, rule, directory)
    return rule if None not in autos and require_reason is not None else None


def _check_satisfiable(f: Fields, rule: ApprovalRule, directory: _Directory) -> None:
    eligible = directory.eligible(rule)
    if not rule.approver_users and not rule.approver_groups:
        f.problem("approvers", "names no users or groups, so nobody could approve")
    elif directory.open_ended and rule.approver_groups:
        return  # who is in a group is the identity provider's to say, at approval time
    elif directory.open_ended and rule.required_approvals > len(rule.approver_users):
        f.problem(
            "required_approvals",
            f"{rule.required_approvals} approvals required but the rule names only "
            f"{len(rule.approver_users)} user(s), so a request could never be approved",
        )
    elif rule.required_approvals > len(eligible):
        who = ", ".join(eligible) or "nobody"
        f.problem(
            "required_approvals",
            f"{rule.required_approvals} approvals required but only {len(eligible)} "
            f"distinct user(s) can approve ({who}), so a request could never be approved",
        )


def _people(
    f: Fields, directory: _Directory, verb: str
) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """`users:` and `groups:` of a rule, each checked against the policy's users."""
    users = f.names("users")
    groups = f.names("groups")
    if directory.open_ended:
        return users, groups  # the provider's people and groups: `unheld_names` lists them
    for user in users or ():
        if UserName(user) not in directory.users:
            f.problem("users", f"unknown user {user!r} (not in users:)")
    known_groups = directory.groups
    for group in groups or ():
        if GroupName(group) not in known_groups:
            f.problem("groups", f"no user is in group {group!r}, so it could never {verb}")
    return users, groups


def _auto(f: Fields, directory: _Directory, scope: _Scope) -> AutoApproval | None:
    users, groups = _people(f, directory, "match")
    if users == () and groups == ():
        f.problem(None, "names no users or groups, so it would match nobody")
    levels = _auto_levels(f, scope)
    max_duration = f.duration("max_duration", required=True)
    for level in levels or ():
        cap = scope.caps.get(level)
        if max_duration and cap is not None and max_duration > cap:
            f.problem(
                "max_duration",
                f"{_fmt(max_duration)} is above the maximum of level {level} ({_fmt(cap)})",
            )
    f.finish()
    if users is None or groups is None or levels is None or max_duration is None:
        return None
    return AutoApproval(
        access_levels=frozenset(levels),
        max_duration=max_duration,
        users=frozenset(UserName(u) for u in users),
        groups=frozenset(GroupName(g) for g in groups),
    )


def _auto_levels(f: Fields, scope: _Scope) -> tuple[AccessLevelName, ...] | None:
    if scope.fixed_level is not None:
        f.forbid(
            "access_levels", "not used in a level's own approval: its rules apply to that level"
        )
        return (scope.fixed_level,)
    names = f.names("access_levels", required=True)
    if names is None:
        return None
    if not names:
        f.problem("access_levels", "names no access levels, so it would match nothing")
    for name in names:
        if name in scope.elsewhere:
            f.problem(
                "access_levels",
                f"level {name!r} has its own approval rule, so this target-wide rule never "
                "applies to it; move the auto-approve rule into that level's approval",
            )
        elif name not in scope.caps and name not in scope.broken:
            known = ", ".join(sorted([*scope.caps, *scope.elsewhere, *scope.broken])) or "none"
            f.problem("access_levels", f"unknown access level {name!r} (this target has: {known})")
    return tuple(AccessLevelName(n) for n in names)


def _notifications(f: Fields, base: Path | None, targets: Iterable[str]) -> Notifications | None:
    hooks = [_webhook(hook) for hook in f.section_list("webhooks")]
    slack = slack_settings(f.section("slack"), base, [*targets], check_webhook_url)
    f.finish()  # an invalid slack section is None here, and its problems reject the policy
    valid = tuple(hook for hook in hooks if hook is not None)
    return Notifications(valid, slack) if len(valid) == len(hooks) else None


def _webhook(f: Fields) -> Webhook | None:
    url = f.string("url", check=check_webhook_url)
    env = f.string("url_env", check=check_env_name)
    if f.has("url") == f.has("url_env"):
        f.problem(None, "needs exactly one of url: URL or url_env: VARIABLE (for a secret URL)")
    form = f.choice("format", WebhookFormat, default=WebhookFormat.GENERIC)
    events = _events(f) if f.has("events") else frozenset(EventKind)
    f.finish()
    if (url is None and env is None) or (url and env) or form is None:
        return None
    secret = None if env is None else SecretRef(env=env)
    return Webhook(url, secret, form, events)


def _events(f: Fields) -> frozenset[EventKind]:
    known = [kind.value for kind in EventKind]
    names = f.names("events") or ()
    if not names:
        f.problem("events", f"names no events, so it would never fire (known: {', '.join(known)})")
    for name in names:
        if name not in known:
            f.problem("events", f"unknown event {name!r} (known: {', '.join(known)})")
    return frozenset(EventKind(name) for name in names if name in known)


def check_webhook_url(text: str) -> str | None:
    """An http(s) URL with a host and no user:password; what is wrong with it, or None."""
    shown = text[:60] + ("..." if len(text) > 60 else "")
    if len(text) > MAX_URL_LENGTH or not text.isprintable() or " " in text:
        return f"must be a URL of at most {MAX_URL_LENGTH} characters without spaces"
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return f"{shown!r} is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return f"must be an http:// or https:// URL, got {shown!r}"
    if not parts.hostname:
        return f"{shown!r} has no host"
    if parts.username is not None or parts.password is not None:
        return "must not contain user:password (give a secret URL with url_env instead)"
    return None


_fmt = format_duration
