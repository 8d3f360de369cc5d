"""`pgwarden policy check FILE` and `pgwarden config check FILE`: validate, summarise, warn.

Exit status: 0 valid (warnings may be printed), 1 invalid (every problem printed, one a line,
with its path in the document), 2 the file could not be read. The summary goes to stdout; problems
and warnings go to stderr, prefixed `FILE:` and `warning:` so that they grep well.

`policy check --connect` also logs in as every mapped role (`proxy/upstream/probe.py`); a role
that cannot log in, can escape its level, or (a control role) cannot terminate backends is a
finding: printed once, `FILE: target ...: what; how to fix it`, and the exit status is 1.

Warnings are things that work but that an admin probably did not mean: a target that cannot
terminate backends, unencrypted upstream traffic over the network, a secret that is not there
right now (the server reads secrets at use time, so this is not an error of the file).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

from proxy.config import (
    ConfigError,
    ConfigUnreadable,
    PoolSettings,
    ServerConfig,
    ThrottleSettings,
    is_loopback,
    load_config,
)
from proxy.policy.durations import format_duration as fmt
from proxy.policy.models import ApprovalRule, Policy, SecretRef, Target, UpstreamTlsMode
from proxy.policy.policy_file import PolicyError, PolicyUnreadable, load_policy, unheld_names
from proxy.policy.yaml_strict import DocumentError
from proxy.upstream.probe import inspect_policy_roles

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2
_CLEARTEXT_MODES = (UpstreamTlsMode.DISABLE, UpstreamTlsMode.PREFER)


def add_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="the YAML file to check")


def add_policy_check_arguments(parser: argparse.ArgumentParser) -> None:
    add_file_argument(parser)
    parser.add_argument(
        "--connect", action="store_true",
        help="also log in as every mapped role and report what it can do (superuser, "
        "CREATEROLE, BYPASSRLS, large objects, temporary tables, pg_signal_backend)",
    )  # fmt: skip
    parser.add_argument(
        "--sso", action="store_true",
        help="people sign in through an identity provider (identity.oidc): users: may be left "
        "out, and rules may name users and groups that only the provider holds (listed)",
    )  # fmt: skip


def run_policy_check(args: argparse.Namespace) -> int:
    try:
        sso = bool(getattr(args, "sso", False))
        policy = load_policy(args.file, people_from_identity=sso)
    except PolicyUnreadable as exc:
        return _unreadable(exc)
    except PolicyError as exc:
        return _invalid(exc, "policy")
    connect = bool(getattr(args, "connect", False))
    # With --connect each role's secret is used for real, and a missing one is a finding there.
    warnings = policy_warnings(policy, os.environ, role_secrets=not connect)
    if sso:
        warnings += _unheld_warnings(policy)
    summary = describe_policy(policy)
    if not connect:
        _print(summary, warnings)
        return EXIT_OK
    # A failed login is a finding, printed once below; the warning the upstream module logs for
    # a server's log would repeat it.
    logging.getLogger("proxy.upstream").setLevel(logging.ERROR)
    reports = asyncio.run(inspect_policy_roles(policy))
    summary += [f"{r.where}: {note}" for r in reports for note in r.notes]
    _print(summary, warnings)
    findings = [f"{r.where}: {finding}" for r in reports for finding in r.findings]
    for finding in findings:
        print(f"{policy.source}: {finding}", file=sys.stderr)
    if findings:
        print(
            f"{policy.source}: valid policy, but {len(findings)} problem(s) with its roles "
            "(--connect); fix them before pgwarden uses it",
            file=sys.stderr,
        )
        return EXIT_INVALID
    return EXIT_OK


def run_config_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigUnreadable as exc:
        return _unreadable(exc)
    except ConfigError as exc:
        return _invalid(exc, "config")
    _print(describe_config(config), config_warnings(config, os.environ))
    return EXIT_OK


def _unheld_warnings(policy: Policy) -> list[str]:
    users, groups = unheld_names(policy)
    return [f"{what} {', '.join(sorted(names))}: in no user of users:, so only the identity "
            "provider can supply them; check the spelling against the provider's"
            for what, names in (("users", users), ("groups", groups)) if names]  # fmt: skip


def _unreadable(exc: DocumentError) -> int:
    for problem in exc.problems:
        print(f"pgwarden: {problem}", file=sys.stderr)
    return EXIT_UNREADABLE


def _invalid(exc: DocumentError, what: str) -> int:
    for problem in exc.problems:
        print(f"{exc.source}: {problem}", file=sys.stderr)
    count = len(exc.problems)
    print(f"{exc.source}: invalid {what}, {count} problem(s)", file=sys.stderr)
    return EXIT_INVALID


def _print(summary: list[str], warnings: list[str]) -> None:
    for line in summary:
        print(line)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


# -- policy ------------------------------------------------------------------------------------


def describe_policy(policy: Policy) -> list[str]:
    """A short human summary: who exists, each target, its levels and approval rules."""
    groups = sorted({g for user in policy.users.values() for g in user.groups})
    lines = [
        f"{policy.source}: valid policy",
        f"users: {len(policy.users)}; groups: {len(groups)} ({_list(groups)})",
        f"admin groups: {_list(sorted(policy.admin_groups))}",
        f"pending requests lapse after {fmt(policy.pending_timeout)}",
    ]
    for target in policy.targets.values():
        lines.extend(_describe_target(target))
    return lines


def _describe_target(target: Target) -> Iterator[str]:
    up = target.upstream
    yield f"target {target.name}" + (f": {target.description}" if target.description else "")
    client_tls = "required" if target.require_client_tls else "optional"
    yield f"  upstream {up.host}:{up.port} database {up.database}, tls {up.tls}"
    yield f"  client TLS {client_tls}"
    control = f"control role {target.control.role}" if target.control else "no control role"
    yield f"  max duration {fmt(target.max_duration)}; {control}"
    yield from _describe_rule(target.approval, "  ")
    for name, level in target.access_levels.items():
        cap = fmt(target.max_duration_for(name))
        yield f"  level {name} -> role {level.role}, max {cap}"
        if level.approval is not None:
            yield from _describe_rule(level.approval, "    ")


def _describe_rule(rule: ApprovalRule, indent: str) -> Iterator[str]:
    who = _who(rule.approver_users, rule.approver_groups)
    reason = "reason required" if rule.require_reason else "no reason required"
    yield f"{indent}approval: {rule.required_approvals} of {who}; {reason}"
    for auto in rule.auto_approve:
        levels = _list(sorted(auto.access_levels))
        yield (
            f"{indent}  auto-approve {_who(auto.users, auto.groups)} "
            f"for {levels} up to {fmt(auto.max_duration)}"
        )


def policy_warnings(
    policy: Policy, environ: Mapping[str, str], *, role_secrets: bool = True
) -> list[str]:
    """`role_secrets`: also warn about the roles' secrets that are not there right now."""
    warnings = [
        w
        for target in policy.targets.values()
        for w in _target_warnings(policy, target, environ if role_secrets else None)
    ]
    members = {g for user in policy.users.values() for g in user.groups}
    for group in sorted(policy.admin_groups - members):
        warnings.append(f"admin group {group} has no members, so it gives nobody admin rights")
    return warnings


def _target_warnings(
    policy: Policy, target: Target, environ: Mapping[str, str] | None
) -> Iterator[str]:
    """`environ` None: leave out the roles' secrets."""
    where = f"target {target.name}"
    if target.control is None:
        yield (
            f"{where}: no control role: sessions can be ended, but a backend that outlives its "
            "grant cannot be terminated without a role with pg_signal_backend"
        )
    elif environ is not None:
        yield from _secret_warnings(f"{where} control role", target.control.password, environ)
    up = target.upstream
    if up.tls in _CLEARTEXT_MODES and not is_loopback(up.host):
        yield (
            f"{where}: upstream {up.host} is not a loopback address and tls is {up.tls}: "
            "traffic may cross the network unencrypted or to an unverified server; "
            "use tls: require or verify-full"
        )
    for name, level in target.access_levels.items():
        if environ is not None:
            yield from _secret_warnings(f"{where} level {name}", level.password, environ)
    rules = [("", target.approval)]
    rules += [(f" level {n}", lv.approval) for n, lv in target.access_levels.items() if lv.approval]
    for suffix, rule in rules:
        yield from _self_approval_warning(policy, f"{where}{suffix}", rule)


def _secret_warnings(where: str, secret: SecretRef, environ: Mapping[str, str]) -> Iterator[str]:
    if secret.env is not None and not environ.get(secret.env):
        yield f"{where}: environment variable {secret.env} is not set (or empty) right now"
    if secret.file is not None and not secret.file.is_file():
        yield f"{where}: secret file {secret.file} does not exist right now"


def _self_approval_warning(policy: Policy, where: str, rule: ApprovalRule) -> Iterator[str]:
    eligible = [u for u in policy.users if policy.can_approve(u, rule)]
    if len(eligible) == rule.required_approvals:
        yield (
            f"{where}: {rule.required_approvals} approval(s) required and exactly that many "
            "eligible approvers, so a request by one of them can never be approved "
            "(nobody approves their own request)"
        )


def _who(users: frozenset[str], groups: frozenset[str]) -> str:
    parts = [f"users {_list(sorted(users))}"] if users else []
    parts += [f"groups {_list(sorted(groups))}"] if groups else []
    return ", ".join(parts) or "nobody"


def _list(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "none"


# -- config ------------------------------------------------------------------------------------


def _postgres_state(config: ServerConfig) -> str:
    dsn = config.state.dsn.describe() if config.state.dsn else "?"
    return f"PostgreSQL (DSN from {dsn}, schema {config.state.schema})"


def describe_config(config: ServerConfig) -> list[str]:
    proxy, limits, sessions = config.proxy, config.limits, config.sessions
    tls = f"client TLS from {proxy.tls.cert_file}" if proxy.tls else "no client TLS"
    return [
        f"{config.source}: valid server config",
        f"proxy: listening on {proxy.listen}{_workers(proxy.workers)}, {tls}, "
        f"login timeout {fmt(proxy.login_timeout)}",
        f"api: listening on {config.api.listen}",
        f"policy: {config.paths.policy}",
        f"state: {config.paths.state or _postgres_state(config)}",
        f"audit log: {config.paths.audit_log} (HMAC key from {config.audit.hmac_key.describe()})",
        f"limits: {limits.max_sessions} sessions ({limits.max_sessions_per_source} per source), "
        f"{limits.max_preauth_connections} logging in "
        f"({limits.max_preauth_per_source} per source), "
        f"messages up to {_size(limits.max_message_bytes)}",
        f"failed logins: per source {_throttle(limits.failed_logins_per_source)}; "
        f"per user and source {_throttle(limits.failed_logins_per_user_and_source)}; "
        f"per user (delays only) {_throttle(limits.failed_logins_per_user)}",
        f"sessions: warned {_list([fmt(w) for w in sessions.warn_before])} before the end; "
        f"long after {fmt(sessions.long_session_threshold)}; "
        f"shutdown grace {fmt(sessions.shutdown_grace)}",
        _pool(config.upstream_pool),
    ]


def _workers(count: int) -> str:
    if count == 1:
        return ""
    return f" with {count} worker processes (limits below are split between them)"


def _pool(pool: PoolSettings) -> str:
    if not pool.enabled:
        return "upstream pool: off (every session logs in to the database anew)"
    return (
        f"upstream pool: on, up to {pool.max_idle} idle backends per target and level, "
        f"idle for {fmt(timedelta(seconds=pool.idle_timeout))}, "
        f"at most {fmt(timedelta(seconds=pool.max_lifetime))} old"
    )


def _size(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} bytes"


def _throttle(rule: ThrottleSettings) -> str:
    return f"{rule.burst} at once, then one every {fmt(rule.refill_every)}"


def config_warnings(config: ServerConfig, environ: Mapping[str, str]) -> list[str]:
    warnings = list(_secret_warnings("audit HMAC key", config.audit.hmac_key, environ))
    listen = config.proxy.listen
    if config.proxy.tls is None and not listen.is_loopback:
        warnings.append(
            f"proxy.listen {listen} is not a loopback address and proxy.tls is not set: "
            "client sessions would cross the network in clear text"
        )
    files = [("paths.policy", config.paths.policy)]
    if config.proxy.tls is not None:
        files += [("proxy.tls.cert_file", config.proxy.tls.cert_file)]
        files += [("proxy.tls.key_file", config.proxy.tls.key_file)]
    warnings += [
        f"{key}: {path} does not exist right now" for key, path in files if not path.exists()
    ]
    return warnings
