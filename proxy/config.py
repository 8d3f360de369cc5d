"""The server's own settings (`pgwarden.yaml`): typed, validated once at startup, strict.

Kept apart from the policy: this file says *how* the server runs (where it listens, where its
files are, its limits and timeouts); the policy says *who* may do what and is hot-reloaded. Every
problem is reported at once with its path, exactly as for the policy (the same `fields.py`
helpers), unknown keys are errors, and secrets are references only (`hmac_key_env` or
`hmac_key_file`). Relative paths are taken from the config file's directory, so a config works
the same whatever directory the server is started from.

Every limit has a safe default, named below with its reason; an admin writes only what differs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from proxy.addresses import ListenAddress, check_listen, is_loopback, parse_listen
from proxy.identity.settings import OidcSettings, parse_identity
from proxy.policy.fields import (
    Fields,
    check_name,
    check_pg_identifier,
    secret_ref,
)
from proxy.policy.models import SecretRef
from proxy.policy.yaml_strict import DocumentError, Problems, build_document, read_source
from proxy.wire.limits import DEFAULT_MAX_MESSAGE_LENGTH, MAX_PREAUTH_MESSAGE_LENGTH

# Re-exported: the config's users name the address types here.
__all__ = ["ListenAddress", "is_loopback", "parse_listen"]  # and every public name below

DEFAULT_PROXY_LISTEN = "127.0.0.1:6432"  # loopback until an admin decides otherwise
DEFAULT_API_LISTEN = "127.0.0.1:8080"
# Pre-auth: a client has this long from accept to a completed login (slowloris, row 33).
DEFAULT_LOGIN_TIMEOUT = timedelta(seconds=10)
MAX_LOGIN_TIMEOUT = timedelta(minutes=5)
DEFAULT_MAX_SESSIONS = 1000
# One address may be an application server's pool or an office NAT: 200 concurrent logins and
# sessions from it must succeed, with room to spare when worker processes split the caps.
DEFAULT_MAX_SESSIONS_PER_SOURCE = 250
# Connections that have not logged in yet: each holds at most its unread inbox (256 KiB,
# proxy/net/peer.py) and one pre-auth message (64 KiB) for at most the login timeout, so 500
# bound a flood's memory to ~160 MiB; two sources at their own cap are needed to fill them.
DEFAULT_MAX_PREAUTH_CONNECTIONS = 500
DEFAULT_MAX_PREAUTH_PER_SOURCE = 250
# After login a message is buffered whole before it is relayed (so it can be audited): 64 MiB
# admits very large queries and bytea parameters yet keeps one session's worst case far below
# Postgres's own 1 GiB limit, which would let a handful of sessions exhaust the host's memory.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# On SIGTERM live sessions get this long before they are ended.
DEFAULT_SHUTDOWN_GRACE = timedelta(seconds=10)
MAX_SHUTDOWN_GRACE = timedelta(minutes=10)
# A session is told its grant is about to end this long before it does.
DEFAULT_WARN_BEFORE = (timedelta(minutes=5), timedelta(minutes=1))
MAX_WARNINGS = 10
# Sessions open longer than this are flagged (metric and audit) even inside a longer grant.
DEFAULT_LONG_SESSION_THRESHOLD = timedelta(hours=8)
# Worker processes sharing the Postgres port (SO_REUSEPORT). The cancel key carries the worker's
# index in its low bits (proxy/session/registry.py), which caps the count.
MAX_WORKERS = 64
MAX_POOL_IDLE = 1000  # idle upstream backends kept per role (each is a Postgres process)
# Failed-login throttling (proxy/auth/throttle.py), token buckets of `burst` failures, then one
# more every `refill_every`: an address is refused when its own bucket, or the bucket of the user
# name it tries, is empty; a user name failing from everywhere gets its failures answered late,
# never refused (a stranger must not be able to lock anyone out).
DEFAULT_THROTTLE_PER_SOURCE = (30, timedelta(seconds=2))  # burst 30, one more every 2 s
DEFAULT_THROTTLE_PER_USER_AND_SOURCE = (10, timedelta(seconds=6))
DEFAULT_THROTTLE_PER_USER = (10, timedelta(seconds=6))


class ConfigError(DocumentError):
    """The server config cannot be used; `problems` lists everything wrong with it."""


class ConfigUnreadable(ConfigError):
    """The config file could not be read at all."""


class FsyncPolicy(StrEnum):
    """When the audit sink makes its records durable (`audit.fsync`): before each write returns,
    every `fsync_interval`, or when the operating system decides."""

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class ProxySettings:
    listen: ListenAddress
    tls: TlsFiles | None
    login_timeout: timedelta
    workers: int = 1  # processes accepting on `listen` (proxy/workers/primary.py)
    # pg_stat_activity shows `pgwarden:<user>:<grant> <client's name>` as application_name; off:
    # the client's application_name reaches the database untouched (proxy/session/opening.py).
    identity_in_application_name: bool = True
    # A NOTICE at login saying how long the access lasts (psql prints it; scripts that treat any
    # stderr output as failure may turn it off).
    login_notice: bool = True


@dataclass(frozen=True, slots=True)
class ApiSettings:
    listen: ListenAddress
    # Where clients reach the Postgres listener, as handed out with credentials (a load balancer,
    # a DNS name); None: `proxy.listen` (or, if that is a wildcard, the host the API was called on).
    public_proxy_address: ListenAddress | None = None


@dataclass(frozen=True, slots=True)
class PathSettings:
    policy: Path
    state: Path | None  # the SQLite file of requests and grants; None with a PostgreSQL store
    audit_log: Path


class StateBackend(StrEnum):
    SQLITE = "sqlite"  # one file, `paths.state`: one server on one host
    POSTGRES = "postgres"  # a database several servers can share (proxy/grants/pg_store.py)


DEFAULT_STATE_SCHEMA = "pgwarden"
DEFAULT_MAX_STALENESS = 30.0  # seconds: a login may rest on state read this long ago, no longer


@dataclass(frozen=True, slots=True)
class StateSettings:
    """`state:` where requests, grants, credentials and API tokens live. `dsn` (`dsn_env` or
    `dsn_file`, a secret: it holds the password) is the libpq connection string or URI of the
    PostgreSQL database; TLS to it is what the DSN says (`sslmode=verify-full sslrootcert=...`).
    `schema`: where in that database pgwarden keeps its tables."""

    backend: StateBackend = StateBackend.SQLITE
    dsn: SecretRef | None = None
    schema: str = DEFAULT_STATE_SCHEMA
    # With postgres, this server is one replica of several (proxy/cluster): `replica` names it
    # (its audit chain, its sessions, its cancel keys; default: the host name), `advertise` is
    # where the others reach its proxy port (cancel forwarding; default: `proxy.listen`), and
    # logins are served from the last state read for `max_staleness` while the store is away.
    replica: str = ""
    advertise: ListenAddress | None = None
    max_staleness: float = DEFAULT_MAX_STALENESS


@dataclass(frozen=True, slots=True)
class AuditSettings:
    hmac_key: SecretRef
    fsync: FsyncPolicy = FsyncPolicy.INTERVAL
    fsync_interval: timedelta = timedelta(milliseconds=200)
    max_file_bytes: int = 64 * 1024 * 1024
    max_query_bytes: int = 1024 * 1024
    max_param_bytes: int = 1024
    record_queries: bool = True  # False: sessions and the lifecycle only, no per-query records


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    """`burst` failed logins at once, then one more every `refill_every`."""

    burst: int
    refill_every: timedelta


@dataclass(frozen=True, slots=True)
class Limits:
    max_sessions: int
    max_sessions_per_source: int
    max_preauth_connections: int
    max_preauth_per_source: int
    max_message_bytes: int
    # `failed_logins.per_user`: failures of one user name from any address. Since the throttle
    # stopped refusing on it (anyone could lock a user out), an empty bucket only delays the
    # answers to that name's further failures.
    failed_logins_per_user: ThrottleSettings
    # `failed_logins.per_source`: failures of any kind from one address; empty: refused.
    failed_logins_per_source: ThrottleSettings
    # `failed_logins.per_user_and_source`: failed passwords for one user name from one address;
    # empty: that name is refused from that address.
    failed_logins_per_user_and_source: ThrottleSettings = ThrottleSettings(
        DEFAULT_THROTTLE_PER_USER_AND_SOURCE[0], DEFAULT_THROTTLE_PER_USER_AND_SOURCE[1]
    )


@dataclass(frozen=True, slots=True)
class SessionSettings:
    warn_before: tuple[timedelta, ...]  # longest first
    long_session_threshold: timedelta
    shutdown_grace: timedelta


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """`upstream_pool:` reuse of upstream backends between sessions (proxy/upstream/pool.py)."""

    enabled: bool = False
    max_idle: int = 8  # idle backends kept per (endpoint, role)
    idle_timeout: float = 60.0  # seconds
    max_lifetime: float = 1800.0  # seconds from login


@dataclass(frozen=True, slots=True)
class ServerConfig:
    proxy: ProxySettings
    api: ApiSettings
    paths: PathSettings
    audit: AuditSettings
    limits: Limits
    sessions: SessionSettings
    source: str = ""
    upstream_pool: PoolSettings = PoolSettings()
    state: StateSettings = StateSettings()
    identity: OidcSettings | None = None  # `identity.oidc`: single sign-on (proxy/identity)


def load_config(path: Path) -> ServerConfig:
    """Read and validate the server config file."""
    text = read_source(path, ConfigError, ConfigUnreadable)
    return parse_config(text, str(path), base_dir=path.absolute().parent)


def parse_config(
    text: str, source: str = "<config>", *, base_dir: Path | None = None
) -> ServerConfig:
    """Validate config YAML; `base_dir` resolves relative paths (None: leave them relative)."""
    return build_document(
        text, source, ConfigError, lambda doc, problems: _config(doc, problems, base_dir, source)
    )


def _config(
    document: object, problems: Problems, base_dir: Path | None, source: str
) -> ServerConfig | None:
    if document is None:
        problems.add("", "the config is empty; it needs at least paths: and audit:")
        return None
    root = Fields.of(document, "", problems)
    if root is None:
        return None
    proxy = _proxy(root.section_or_empty("proxy"), base_dir)
    api = _api(root.section_or_empty("api"))
    state = _state(root.section_or_empty("state"), base_dir)
    sqlite = state is None or state.backend is StateBackend.SQLITE
    paths = _paths(root.section("paths", required=True), base_dir, sqlite=sqlite)
    audit = _audit(root.section("audit", required=True), base_dir)
    limits = _limits(root.section_or_empty("limits"))
    sessions = _sessions(root.section_or_empty("sessions"))
    pool = _upstream_pool(root.section_or_empty("upstream_pool"))
    identity = parse_identity(root.section("identity"), base_dir)
    root.finish()
    if proxy and api and proxy.listen == api.listen and proxy.listen.port != 0:
        root.problem("api", f"api.listen and proxy.listen are the same address ({api.listen})")
    if proxy is None or api is None or paths is None or audit is None:
        return None
    if limits is None or sessions is None or pool is None or state is None:
        return None
    return ServerConfig(proxy, api, paths, audit, limits, sessions, source, pool, state, identity)


def _listen(f: Fields, default: str) -> ListenAddress | None:
    text = f.string("listen", default=default, check=check_listen)
    return None if text is None else parse_listen(text)


def _proxy(f: Fields, base_dir: Path | None) -> ProxySettings | None:
    listen = _listen(f, DEFAULT_PROXY_LISTEN)
    tls_fields = f.section("tls")
    tls = _tls(tls_fields, base_dir) if tls_fields else None
    login_timeout = f.duration(
        "login_timeout", default=DEFAULT_LOGIN_TIMEOUT, maximum=MAX_LOGIN_TIMEOUT
    )
    workers = f.integer("workers", default=1, low=1, high=MAX_WORKERS)
    identity = f.boolean("identity_in_application_name", default=True)
    login_notice = f.boolean("login_notice", default=True)
    f.finish()
    if listen is None or login_timeout is None or workers is None or (tls_fields and tls is None):
        return None
    if identity is None or login_notice is None:
        return None
    return ProxySettings(listen, tls, login_timeout, workers, identity, login_notice)


def _tls(f: Fields, base_dir: Path | None) -> TlsFiles | None:
    cert = f.path_value("cert_file", base_dir, required=True)
    key = f.path_value("key_file", base_dir, required=True)
    f.finish()
    return TlsFiles(cert, key) if cert and key else None


def _api(f: Fields) -> ApiSettings | None:
    listen = _listen(f, DEFAULT_API_LISTEN)
    public_text = f.string("public_proxy_address", check=_check_public_address)
    f.finish()
    public = None if public_text is None else parse_listen(public_text)
    if listen is None or (f.has("public_proxy_address") and public is None):
        return None
    return ApiSettings(listen, public)


def _check_public_address(text: str) -> str | None:
    if (error := check_listen(text)) is not None:
        return error
    address = parse_listen(text)
    if address.port == 0 or address.host in ("0.0.0.0", "::"):  # noqa: S104 - refusing it
        return f"{text!r} is not an address a client can connect to (a wildcard or port 0)"
    return None


def _paths(f: Fields | None, base_dir: Path | None, *, sqlite: bool) -> PathSettings | None:
    if f is None:
        return None
    policy = f.path_value("policy", base_dir, required=True)
    if not sqlite:
        f.forbid("state", "is the SQLite file, unused with state.backend: postgres; remove it")
    state = f.path_value("state", base_dir, required=True) if sqlite else None
    audit_log = f.path_value("audit_log", base_dir, required=True)
    f.finish()
    if policy is None or audit_log is None or (sqlite and state is None):
        return None
    return PathSettings(policy, state, audit_log)


def _state(f: Fields, base_dir: Path | None) -> StateSettings | None:
    backend = f.choice("backend", StateBackend, default=StateBackend.SQLITE)
    if backend is not StateBackend.POSTGRES:
        for key in ("dsn_env", "dsn_file", "schema", "replica", "advertise", "max_staleness"):
            f.forbid(key, "is for state.backend: postgres")
        f.finish()
        return None if backend is None else StateSettings()
    dsn = secret_ref(f, "dsn", base_dir)
    schema = f.string("schema", default=DEFAULT_STATE_SCHEMA, check=check_pg_identifier)
    replica = f.string("replica", default=default_replica(), check=check_replica)
    advertise_text = f.string("advertise", check=check_listen)
    advertise = None if advertise_text is None else parse_listen(advertise_text)
    staleness = f.duration("max_staleness", default=timedelta(seconds=DEFAULT_MAX_STALENESS))
    f.finish()
    if not (dsn and schema and replica and staleness) or (f.has("advertise") and not advertise):
        return None  # the problem is reported
    return StateSettings(
        backend, dsn, schema, replica, advertise, staleness.total_seconds()
    )  # fmt: skip


# A replica's name goes into its audit files' names (`audit.<replica>.jsonl`): a last part that
# names another audit file (a worker's chain, the commands', a head, an archive) would clash.
_RESERVED_LAST = re.compile(r"worker[0-9]+|commands|head|anchor|lock|tmp|[0-9]+")


def check_replica(text: str) -> str | None:
    """A `check_name` name whose last dot-separated part names no other audit file."""
    return check_name(text) or replica_name_problem(text)


def replica_name_problem(replica: str) -> str | None:
    """Why `replica` cannot name audit chains, or None."""
    last = replica.rpartition(".")[2]
    if _RESERVED_LAST.fullmatch(last):
        return (f"{replica!r} ends in {last!r}, which names another audit file (a worker's, "
                "the commands', a head or an archive); choose another name")  # fmt: skip
    return None


def default_replica() -> str:
    """This host's name, as far as it is a valid replica name (else "pgwarden")."""
    name = os.uname().nodename.split(".")[0]  # socket.gethostname(), without `socket`
    return name if name and check_replica(name) is None else "pgwarden"


def _audit(f: Fields | None, base_dir: Path | None) -> AuditSettings | None:
    if f is None:
        return None
    key = secret_ref(f, "hmac_key", base_dir)
    fsync = f.choice("fsync", FsyncPolicy, default=FsyncPolicy.INTERVAL)
    interval = f.duration("fsync_interval", default=timedelta(milliseconds=200))
    file_bytes = f.integer("max_file_bytes", default=64 * 1024 * 1024, low=4096, high=2**40)
    query_bytes = f.integer("max_query_bytes", default=1024 * 1024, low=64, high=2**30)
    param_bytes = f.integer("max_param_bytes", default=1024, low=16, high=2**30)
    record_queries = f.boolean("record_queries", default=True)
    f.finish()
    if (
        not key or fsync is None or interval is None or file_bytes is None
        or query_bytes is None or param_bytes is None or record_queries is None
    ):  # fmt: skip
        return None
    return AuditSettings(key, fsync, interval, file_bytes, query_bytes, param_bytes, record_queries)


def _limits(f: Fields) -> Limits | None:
    sessions = f.integer("max_sessions", default=DEFAULT_MAX_SESSIONS, low=1, high=1_000_000)
    per_source = f.integer(
        "max_sessions_per_source", default=DEFAULT_MAX_SESSIONS_PER_SOURCE, low=1, high=1_000_000
    )
    preauth = f.integer(
        "max_preauth_connections", default=DEFAULT_MAX_PREAUTH_CONNECTIONS, low=1, high=1_000_000
    )
    preauth_per_source = f.integer(
        "max_preauth_per_source", default=DEFAULT_MAX_PREAUTH_PER_SOURCE, low=1, high=1_000_000
    )
    message_bytes = f.integer(
        "max_message_bytes",
        default=DEFAULT_MAX_MESSAGE_BYTES,
        low=MAX_PREAUTH_MESSAGE_LENGTH,
        high=DEFAULT_MAX_MESSAGE_LENGTH,
    )
    throttles = f.section_or_empty("failed_logins")
    per_user = _throttle(throttles.section_or_empty("per_user"), DEFAULT_THROTTLE_PER_USER)
    per_source_throttle = _throttle(
        throttles.section_or_empty("per_source"), DEFAULT_THROTTLE_PER_SOURCE
    )
    per_pair = _throttle(
        throttles.section_or_empty("per_user_and_source"), DEFAULT_THROTTLE_PER_USER_AND_SOURCE
    )
    throttles.finish()
    f.finish()
    _at_most(f, "max_sessions_per_source", per_source, "max_sessions", sessions)
    _at_most(f, "max_preauth_per_source", preauth_per_source, "max_preauth_connections", preauth)
    if sessions is None or per_source is None or preauth is None or preauth_per_source is None:
        return None
    if message_bytes is None or per_user is None or per_source_throttle is None:
        return None
    if per_pair is None:
        return None
    return Limits(
        sessions,
        per_source,
        preauth,
        preauth_per_source,
        message_bytes,
        per_user,
        per_source_throttle,
        per_pair,
    )


def _at_most(f: Fields, key: str, value: int | None, limit_key: str, limit: int | None) -> None:
    if value is not None and limit is not None and value > limit:
        f.problem(key, f"{value} is above {limit_key} ({limit}), so it would never apply")


def _throttle(f: Fields, default: tuple[int, timedelta]) -> ThrottleSettings | None:
    burst = f.integer("burst", default=default[0], low=1, high=10_000)
    refill = f.duration("refill_every", default=default[1], maximum=timedelta(hours=1))
    f.finish()
    return ThrottleSettings(burst, refill) if burst is not None and refill is not None else None


def _sessions(f: Fields) -> SessionSettings | None:
    warn_before = f.durations("warn_before", default=DEFAULT_WARN_BEFORE)
    if len(warn_before) > MAX_WARNINGS:
        f.problem("warn_before", f"at most {MAX_WARNINGS} warnings")
    if len(set(warn_before)) < len(warn_before):
        f.problem("warn_before", "lists the same time twice")
    threshold = f.duration("long_session_threshold", default=DEFAULT_LONG_SESSION_THRESHOLD)
    grace = f.duration("shutdown_grace", default=DEFAULT_SHUTDOWN_GRACE, maximum=MAX_SHUTDOWN_GRACE)
    f.finish()
    if threshold is None or grace is None:
        return None
    return SessionSettings(tuple(sorted(warn_before, reverse=True)), threshold, grace)


def _upstream_pool(f: Fields) -> PoolSettings | None:
    default = PoolSettings()
    enabled = f.boolean("enabled", default=default.enabled)
    max_idle = f.integer("max_idle", default=default.max_idle, low=1, high=MAX_POOL_IDLE)
    idle = f.duration("idle_timeout", default=timedelta(seconds=default.idle_timeout))
    lifetime = f.duration("max_lifetime", default=timedelta(seconds=default.max_lifetime))
    f.finish()
    if enabled is None or max_idle is None or idle is None or lifetime is None:
        return None
    return PoolSettings(enabled, max_idle, idle.total_seconds(), lifetime.total_seconds())
