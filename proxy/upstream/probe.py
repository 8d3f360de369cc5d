"""Live checks of the upstream roles a policy maps to, for `pgwarden policy check --connect`.

Read-only access is enforced by the upstream role's privileges, not by parsing SQL (SECURITY.md
row 23), so the roles themselves must be right. This logs in as each mapped role and reports
what would let it escape its level: superuser, CREATEROLE, BYPASSRLS or REPLICATION (row 24),
and what PUBLIC grants by default that a read-only role inherits (creating large objects and
temporary tables). For a control role it checks membership of `pg_signal_backend`.

A report's `findings` are what must be fixed before pgwarden can use the role safely: it cannot
log in (with why and what to change), it can escape its level, a control role cannot terminate
backends. Each says how to fix it, and the check fails while there are any. Its `notes` are
advice (what PUBLIC grants by default), not failures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from proxy.net.certs import CertificateError
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
from proxy.wire.sqlstate import (
    INVALID_AUTHORIZATION_SPECIFICATION,
    INVALID_CATALOG_NAME,
    INVALID_PASSWORD,
)

ROLE_FACTS = (
    "SELECT rolsuper, rolcreaterole, rolbypassrls, rolreplication, "
    "has_function_privilege('lo_create(oid)', 'EXECUTE'), "
    "has_database_privilege(current_database(), 'TEMPORARY'), "
    "pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') "
    "FROM pg_roles WHERE rolname = current_user"
)
# (what the role has, the attribute that takes it away) for the first four facts.
ESCALATIONS = (
    ("is a superuser", "NOSUPERUSER"),
    ("has CREATEROLE", "NOCREATEROLE"),
    ("has BYPASSRLS", "NOBYPASSRLS"),
    ("has REPLICATION", "NOREPLICATION"),
)


@dataclass(frozen=True, slots=True)
class RoleReport:
    where: str  # e.g. 'target orders level read-only (role orders_ro)'
    findings: tuple[str, ...]  # to fix before pgwarden uses the role; each says how
    notes: tuple[str, ...]  # advice


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
        password = secret.read()
    except SecretUnavailable as exc:
        return RoleReport(where, (f"cannot log in: {_missing_secret(secret, exc)}",), ())
    try:
        login = UpstreamLogin.for_upstream(
            target.upstream, role=role, password=password, target=target.name,
            startup_parameters=(("application_name", "pgwarden-policy-check"),),
        )  # fmt: skip
        ssl_context = upstream_ssl_context(target.upstream.tls, target.upstream.ca_file)
        conn = await connect_upstream(login, ssl_context=ssl_context)
    except CertificateError as exc:
        return RoleReport(where, (f"cannot log in: {exc.message}",), ())
    except UpstreamError as exc:
        return RoleReport(where, (_login_failed(exc, target, role, secret),), ())
    try:
        rows = await simple_query(conn, ROLE_FACTS)
    except QueryFailed as exc:
        return RoleReport(where, (f"cannot read its attributes in pg_roles: {exc}",), ())
    finally:
        await terminate_upstream(conn)
    facts = [value == TEXT_TRUE for value in rows[0]] if rows else [False] * 7
    findings = tuple(_findings(facts, role, control))
    return RoleReport(where, findings, tuple(_notes(facts, control)))


def _missing_secret(secret: SecretRef, exc: SecretUnavailable) -> str:
    if secret.env is not None:
        return f"its password variable {secret.env} is not set (or empty); export it"
    cause = exc.__cause__
    why = "is empty"
    if isinstance(cause, OSError):
        why = f"cannot be read ({cause.strerror or cause})"
    return f"its password file {secret.file} {why}; write the role's password into it"


def _login_failed(exc: UpstreamError, target: Target, role: str, secret: SecretRef) -> str:
    """Why the login failed ("could not log in ...", "the database refused the login ..."), and
    what to change: the password, pg_hba.conf, the upstream."""
    what = str(exc).removeprefix("pgwarden: ")
    up = target.upstream
    if not exc.refused:  # no answer from a database at all
        return (
            f"{what}; check that PostgreSQL runs at {up.host}:{up.port} (the upstream of target "
            f"{target.name}) and accepts connections from this host"
        )
    if exc.sqlstate == INVALID_PASSWORD:
        fix = (
            f"make the password in {secret.describe()} the role's "
            f"(ALTER ROLE {role} PASSWORD '...'), or point the level at the right secret"
        )
    elif exc.sqlstate == INVALID_AUTHORIZATION_SPECIFICATION:
        fix = f"let {role} log in from this host in pg_hba.conf, and check that it has LOGIN"
    elif exc.sqlstate == INVALID_CATALOG_NAME:
        fix = f"correct upstream.database ({up.database}) of target {target.name}"
    else:
        fix = f"fix the role {role} or its password"
    return f"{what}; {fix}"


def _findings(facts: list[bool], role: str, control: bool) -> Iterator[str]:
    for flag, (what, remedy) in zip(facts[:4], ESCALATIONS, strict=True):
        if flag:
            yield (
                f"{what}: it can escape any access level (SECURITY.md row 24); "
                f"ALTER ROLE {role} {remedy}, or map a role without it"
            )
    if control and not facts[6]:
        yield (
            "is not a member of pg_signal_backend: it cannot terminate lingering backends; "
            f"GRANT pg_signal_backend TO {role}"
        )


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
