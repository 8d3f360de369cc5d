"""Live checks of the upstream roles a policy maps to, for `pgwarden policy check --connect`.

Read-only access is enforced by the upstream role's privileges, not by parsing SQL (SECURITY.md
row 23), so the roles themselves must be right. This logs in as each mapped role and reports
what would let it escape its level: superuser, CREATEROLE, BYPASSRLS or REPLICATION (row 24),
and what PUBLIC grants by default that a read-only role inherits (creating large objects and
temporary tables). For a control role it checks membership of `pg_signal_backend`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from proxy.net.tls import upstream_ssl_context
from proxy.policy.models import Policy, SecretRef, SecretUnavailable, Target
from proxy.upstream.connect import (
    UpstreamError,
    UpstreamLogin,
    connect_upstream,
    terminate_upstream,
)
from proxy.upstream.oneshot import QueryFailed, simple_query
from proxy.wire import TEXT_TRUE

ROLE_FACTS = (
    "SELECT rolsuper, rolcreaterole, rolbypassrls, rolreplication, "
    "has_function_privilege('lo_create(oid)', 'EXECUTE'), "
    "has_database_privilege(current_database(), 'TEMPORARY'), "
    "pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') "
    "FROM pg_roles WHERE rolname = current_user"
)
ESCALATIONS = ("is a superuser", "has CREATEROLE", "has BYPASSRLS", "has REPLICATION")


@dataclass(frozen=True, slots=True)
class RoleReport:
    where: str  # e.g. 'target orders level read-only (role orders_ro)'
    warnings: tuple[str, ...]
    notes: tuple[str, ...]


async def inspect_policy_roles(policy: Policy) -> list[RoleReport]:
    """Log in as every role the policy maps to and report what it can do."""
    reports: list[RoleReport] = []
    for target in policy.targets.values():
        for level in target.access_levels.values():
            where = f"target {target.name} level {level.name} (role {level.role})"
            reports.append(await _inspect(target, level.role, level.password, where, False))
        if target.control is not None:
            where = f"target {target.name} control role {target.control.role}"
            control = target.control
            reports.append(await _inspect(target, control.role, control.password, where, True))
    return reports


async def _inspect(
    target: Target, role: str, secret: SecretRef, where: str, control: bool
) -> RoleReport:
    try:
        login = UpstreamLogin.for_upstream(
            target.upstream, role=role, password=secret.read(), target=target.name,
            startup_parameters=(("application_name", "pgwarden-policy-check"),),
        )  # fmt: skip
        conn = await connect_upstream(
            login, ssl_context=upstream_ssl_context(target.upstream.tls, target.upstream.ca_file)
        )
    except (UpstreamError, SecretUnavailable) as exc:
        return RoleReport(where, (f"cannot log in: {exc}",), ())
    try:
        rows = await simple_query(conn, ROLE_FACTS)
    except QueryFailed as exc:
        return RoleReport(where, (f"cannot read its attributes: {exc}",), ())
    finally:
        await terminate_upstream(conn)
    facts = [value == TEXT_TRUE for value in rows[0]] if rows else [False] * 7
    return RoleReport(where, tuple(_warnings(facts, control)), tuple(_notes(facts, control)))


def _warnings(facts: list[bool], control: bool) -> Iterator[str]:
    for flag, what in zip(facts[:4], ESCALATIONS, strict=True):
        if flag:
            yield f"{what}: it can escape any access level (SECURITY.md row 24)"
    if control and not facts[6]:
        yield "is not a member of pg_signal_backend: it cannot terminate lingering backends"


def _notes(facts: list[bool], control: bool) -> Iterator[str]:
    if control or facts[0]:
        return  # a superuser can do everything; the warning already says so
    if facts[4]:
        yield (
            "can create large objects (EXECUTE on lo_create, granted to PUBLIC by default); for "
            "a read-only level: REVOKE EXECUTE ON FUNCTION lo_create(oid), lo_creat(integer), "
            "lo_from_bytea(oid, bytea) FROM PUBLIC"
        )
    if facts[5]:
        yield (
            "can create temporary tables (TEMPORARY, granted to PUBLIC by default); for a "
            "read-only level: REVOKE TEMPORARY ON DATABASE <db> FROM PUBLIC"
        )
