"""The server config: typed, strict, safe defaults, every problem at once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from proxy.commands.checks import describe_config
from proxy.config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    ConfigError,
    ConfigUnreadable,
    ListenAddress,
    PoolSettings,
    ServerConfig,
    StateBackend,
    StateSettings,
    ThrottleSettings,
    default_replica,
    load_config,
    parse_config,
    parse_listen,
)
from proxy.policy.models import SecretRef

REPO = Path(__file__).resolve().parents[2]
MINIMAL = """\
paths: {policy: policy.yaml, state: state/pgwarden.db, audit_log: /var/log/pgwarden/audit.jsonl}
audit: {hmac_key_env: AUDIT_KEY}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.yaml")
    return [str(problem) for problem in caught.value.problems]


def test_the_example_config_is_valid_and_uses_the_documented_values() -> None:
    config = load_config(REPO / "config" / "pgwarden.example.yaml")
    assert config.proxy.listen == ListenAddress("127.0.0.1", 6432)
    assert config.paths.policy == REPO / "config" / "policy.example.yaml"
    assert config.limits.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 64 * 1024 * 1024


def test_the_example_says_what_the_defaults_are() -> None:
    example = load_config(REPO / "config" / "pgwarden.example.yaml")
    defaults = parse_config(MINIMAL)
    for section in ("proxy", "api", "limits", "sessions", "upstream_pool"):
        assert getattr(example, section) == getattr(defaults, section), section


def test_only_paths_and_audit_are_required_and_the_rest_defaults_safely() -> None:
    config = parse_config(MINIMAL)
    assert str(config.proxy.listen) == "127.0.0.1:6432"
    assert str(config.api.listen) == "127.0.0.1:8080"
    assert config.proxy.tls is None
    assert config.proxy.login_timeout == timedelta(seconds=10)
    assert config.limits.max_sessions == 1000
    assert config.limits.max_sessions_per_source == 250
    assert config.limits.max_preauth_connections == 500
    assert config.limits.max_preauth_per_source == 250
    throttles = config.limits
    assert throttles.failed_logins_per_source == ThrottleSettings(30, timedelta(seconds=2))
    assert throttles.failed_logins_per_user_and_source == ThrottleSettings(10, timedelta(seconds=6))
    assert throttles.failed_logins_per_user == ThrottleSettings(10, timedelta(seconds=6))
    assert config.sessions.warn_before == (timedelta(minutes=5), timedelta(minutes=1))
    assert config.sessions.long_session_threshold == timedelta(hours=8)
    assert config.sessions.shutdown_grace == timedelta(seconds=10)
    assert config.audit.hmac_key == SecretRef(env="AUDIT_KEY")


def test_relative_paths_are_taken_from_the_config_directory(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "pgwarden.yaml"
    path.parent.mkdir()
    path.write_text(MINIMAL + "proxy: {tls: {cert_file: tls/c.pem, key_file: /k.pem}}\n")
    config = load_config(path)
    assert config.paths.policy == tmp_path / "etc" / "policy.yaml"
    assert config.paths.state == tmp_path / "etc" / "state" / "pgwarden.db"
    assert config.paths.audit_log == Path("/var/log/pgwarden/audit.jsonl")
    assert config.proxy.tls is not None
    assert config.proxy.tls.cert_file == tmp_path / "etc" / "tls" / "c.pem"
    assert config.proxy.tls.key_file == Path("/k.pem")


def test_warnings_are_sorted_longest_first() -> None:
    config = parse_config(MINIMAL + "sessions: {warn_before: [30s, 10m, 2m]}\n")
    assert [w.total_seconds() for w in config.sessions.warn_before] == [600, 120, 30]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:6432", ListenAddress("127.0.0.1", 6432)),
        ("0.0.0.0:5432", ListenAddress("0.0.0.0", 5432)),
        ("[::1]:6432", ListenAddress("::1", 6432)),
        ("[::]:6432", ListenAddress("::", 6432)),
        ("localhost:0", ListenAddress("localhost", 0)),
        ("proxy.internal:6432", ListenAddress("proxy.internal", 6432)),
    ],
)
def test_listen_addresses(text: str, expected: ListenAddress) -> None:
    assert parse_listen(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("6432", "needs host:port"),
        (":6432", "needs host:port"),
        ("::1:6432", "IPv6 address in brackets"),
        ("[::1]", r"is not \[ipv6-address\]:port"),
        ("[::1]6432", r"is not \[ipv6-address\]:port"),
        ("[not-v6]:6432", r"is not \[ipv6-address\]:port"),
        ("host:", "must be a number from 0 to 65535"),
        ("host:65536", "must be a number from 0 to 65535"),
        ("host:-1", "must be a number from 0 to 65535"),
        ("host:٣", "must be a number from 0 to 65535"),
        ("bad host:1", "is not a host name"),
    ],
)
def test_bad_listen_addresses_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):  # message is a regex
        parse_listen(text)


BAD = """\
proxy: {listen: '::1:6432', tls: {cert_file: c.pem}, login_timeout: 1h, ssl: true}
api: {listen: 127.0.0.1:6432}
paths: {policy: p.yaml, state: s.db}
audit: {hmac_key: abc123}
limits:
  max_sessions: 10
  max_sessions_per_source: 20
  max_message_bytes: 100
  failed_logins: {per_user: {burst: 0, refill_every: 5}}
sessions: {warn_before: [5m, 5m], shutdown_grace: 0s}
notifications: {}
"""


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    assert problems_of(BAD) == [
        "proxy.listen: write an IPv6 address in brackets, e.g. [::1]:6432, not '::1:6432' (line 1)",
        "proxy.tls.key_file: required (line 1)",
        "proxy.login_timeout: 1h is longer than the maximum of 5m (line 1)",
        "proxy.ssl: unknown key (expected one of: identity_in_application_name, listen, "
        "login_notice, login_timeout, tls, workers) (line 1)",
        "paths.audit_log: required (line 3)",
        "audit.hmac_key: secrets are not allowed in the file; use hmac_key_env: VARIABLE or "
        "hmac_key_file: PATH (line 4)",
        "limits.max_sessions_per_source: 20 is above max_sessions (10), so it would never apply"
        " (line 7)",
        "limits.max_message_bytes: must be from 65535 to 1073741822, got 100 (line 8)",
        "limits.failed_logins.per_user.burst: must be from 1 to 10000, got 0 (line 9)",
        "limits.failed_logins.per_user.refill_every: must be a duration, got a number (a bare "
        "number has no unit: write 90s, 30m, 2h or 1d) (line 9)",
        "sessions.warn_before: lists the same time twice (line 10)",
        "sessions.shutdown_grace: must be longer than zero (line 10)",
        "notifications: unknown key (expected one of: api, audit, identity, limits, paths, "
        "proxy, sessions, state, upstream_pool) (line 11)",
    ]


def test_failed_login_buckets_are_set_per_source_per_user_and_source_and_per_user() -> None:
    config = parse_config(
        MINIMAL
        + "limits:\n  failed_logins:\n"
        + "    per_source: {burst: 100, refill_every: 1s}\n"
        + "    per_user_and_source: {burst: 5, refill_every: 1m}\n"
        + "    per_user: {burst: 50, refill_every: 10s}\n"
    )
    limits = config.limits
    assert limits.failed_logins_per_source == ThrottleSettings(100, timedelta(seconds=1))
    assert limits.failed_logins_per_user_and_source == ThrottleSettings(5, timedelta(minutes=1))
    assert limits.failed_logins_per_user == ThrottleSettings(50, timedelta(seconds=10))


def test_an_unknown_failed_logins_key_is_named_with_the_three_that_exist() -> None:
    assert problems_of(MINIMAL + "limits: {failed_logins: {account_lockout: {burst: 1}}}\n") == [
        "limits.failed_logins.account_lockout: unknown key (expected one of: per_source, "
        "per_user, per_user_and_source) (line 3)"
    ]


def test_the_inline_secret_is_not_echoed() -> None:
    assert not any("abc123" in line for line in problems_of(BAD))


def test_the_proxy_and_the_api_cannot_share_an_address() -> None:
    text = MINIMAL + "proxy: {listen: '127.0.0.1:7000'}\napi: {listen: '127.0.0.1:7000'}\n"
    assert "api: api.listen and proxy.listen are the same address" in problems_of(text)[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the config is empty"),
        ("paths: {}\n", "audit: required"),
        (
            "audit: {hmac_key_env: K, hmac_key_file: k}\n" + MINIMAL.split("\n", maxsplit=1)[0],
            "not both",
        ),
        (MINIMAL + "limits: {max_sessions: 1.5}\n", "must be a whole number, got a number"),
        (MINIMAL + "sessions: {warn_before: 5m}\n", "warn_before: must be a list"),
        (MINIMAL + "sessions: {long_session_threshold: 2026-01-01}\n", "not a date or time"),
        (MINIMAL + "paths: {}\n", "duplicate key 'paths'"),
    ],
)
def test_config_problems(text: str, expected: str) -> None:
    assert any(expected in line for line in problems_of(text))


def test_an_unreadable_config_is_its_own_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigUnreadable, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_the_config_is_immutable() -> None:
    config: ServerConfig = parse_config(MINIMAL)
    with pytest.raises(AttributeError):
        config.limits.max_sessions = 5  # type: ignore[misc]


def test_the_upstream_pool_is_off_unless_enabled() -> None:
    assert parse_config(MINIMAL).upstream_pool == PoolSettings(enabled=False)
    text = "upstream_pool: {enabled: true, max_idle: 3, idle_timeout: 30s, max_lifetime: 10m}\n"
    assert parse_config(MINIMAL + text).upstream_pool == PoolSettings(True, 3, 30.0, 600.0)


def test_upstream_pool_settings_are_checked() -> None:
    text = "upstream_pool: {enabled: yes, max_idle: 0, idle_timeout: 5, size: 3}\n"
    assert problems_of(MINIMAL + text) == [
        "upstream_pool.enabled: must be true or false, got the text 'yes' (line 3)",
        "upstream_pool.max_idle: must be from 1 to 1000, got 0 (line 3)",
        "upstream_pool.idle_timeout: must be a duration, got a number (a bare number has no unit:"
        " write 90s, 30m, 2h or 1d) (line 3)",
        "upstream_pool.size: unknown key (expected one of: enabled, idle_timeout, max_idle,"
        " max_lifetime) (line 3)",
    ]


def test_one_worker_process_unless_more_are_asked_for() -> None:
    assert parse_config(MINIMAL).proxy.workers == 1
    config = parse_config(MINIMAL + "proxy: {workers: 4}\n")
    assert config.proxy.workers == 4
    (line,) = [line for line in describe_config(config) if line.startswith("proxy:")]
    assert "127.0.0.1:6432 with 4 worker processes (limits below are split between them)" in line


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "proxy.workers: must be from 1 to 64, got 0 (line 3)"),
        ("65", "proxy.workers: must be from 1 to 64, got 65 (line 3)"),
        ("two", "proxy.workers: must be a whole number, got the text 'two' (line 3)"),
    ],
)
def test_the_worker_count_is_checked(value: str, expected: str) -> None:
    assert problems_of(MINIMAL + f"proxy: {{workers: {value}}}\n") == [expected]


POSTGRES_STATE = """\
paths: {policy: policy.yaml, audit_log: audit.jsonl}
audit: {hmac_key_env: AUDIT_KEY}
state: {backend: postgres, dsn_env: PGWARDEN_STATE_DSN}
"""


def test_the_state_is_the_sqlite_file_unless_postgres_is_named() -> None:
    assert parse_config(MINIMAL).state == StateSettings(StateBackend.SQLITE)
    config = parse_config(POSTGRES_STATE)
    assert config.state == StateSettings(
        StateBackend.POSTGRES, SecretRef(env="PGWARDEN_STATE_DSN"), "pgwarden", default_replica()
    )
    assert (config.state.advertise, config.state.max_staleness) == (None, 30.0)
    assert config.paths.state is None
    assert "state: PostgreSQL (DSN from env PGWARDEN_STATE_DSN, schema pgwarden)" in (
        describe_config(config)
    )


def test_a_replica_names_itself_and_where_peers_reach_it() -> None:
    text = POSTGRES_STATE.replace(
        "dsn_env: PGWARDEN_STATE_DSN",
        "dsn_env: PGWARDEN_STATE_DSN, replica: pgw-b, advertise: 10.0.0.2:6432, max_staleness: 10s",
    )
    state = parse_config(text).state
    assert (state.replica, state.max_staleness) == ("pgw-b", 10.0)
    assert state.advertise == ListenAddress("10.0.0.2", 6432)


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("replica: 'a b'", "state.replica"),
        ("advertise: nowhere", "state.advertise"),
        ("max_staleness: forever", "state.max_staleness"),
    ],
)
def test_bad_replica_settings_are_named(setting: str, problem: str) -> None:
    text = POSTGRES_STATE.replace("dsn_env: PGWARDEN_STATE_DSN", f"dsn_env: X, {setting}")
    with pytest.raises(ConfigError, match=problem):
        parse_config(text)


def test_replica_settings_need_the_postgres_store() -> None:
    with pytest.raises(ConfigError, match=r"state\.replica.*is for state\.backend: postgres"):
        parse_config(MINIMAL + "state: {replica: a}\n")


def test_a_dsn_file_and_a_schema_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "pgwarden.yaml"
    path.write_text(POSTGRES_STATE.replace("dsn_env: PGWARDEN_STATE_DSN",
                                           "dsn_file: state.dsn, schema: pgw_prod"))  # fmt: skip
    state = load_config(path).state
    assert (state.dsn, state.schema) == (SecretRef(file=tmp_path / "state.dsn"), "pgw_prod")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (POSTGRES_STATE.replace("audit_log:", "state: s.db, audit_log:"),
         "paths.state: is the SQLite file, unused with state.backend: postgres; remove it"),
        (MINIMAL + "state: {dsn_env: X}\n", "state.dsn_env: is for state.backend: postgres"),
        (MINIMAL.replace("state: state/pgwarden.db, ", "") + "state: {backend: sqlite}\n",
         "paths.state: required"),
        (POSTGRES_STATE.replace("dsn_env: PGWARDEN_STATE_DSN", "dsn: postgresql://u:pw@h/db"),
         "state.dsn: secrets are not allowed in the file; use dsn_env: VARIABLE or dsn_file: PATH"),
        (POSTGRES_STATE.replace(", dsn_env: PGWARDEN_STATE_DSN", ""),
         "state: needs a secret reference: use dsn_env: VARIABLE or dsn_file: PATH"),
        (POSTGRES_STATE.replace("postgres,", "mysql,"),
         "state.backend: must be one of sqlite, postgres"),
    ],
)  # fmt: skip
def test_state_problems(text: str, expected: str) -> None:
    assert any(expected in problem for problem in problems_of(text)), problems_of(text)
    assert "pw@h" not in " ".join(problems_of(text))  # an inline DSN is never echoed


def test_a_replica_name_that_would_name_another_audit_file_is_refused_in_the_config() -> None:
    text = POSTGRES_STATE.replace("dsn_env: PGWARDEN_STATE_DSN", "dsn_env: X, replica: a.worker1")
    with pytest.raises(ConfigError, match=r"state\.replica.*names another audit file"):
        parse_config(text)
