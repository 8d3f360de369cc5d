"""Why a test fails (or skips) through pgwarden but passes directly: the causes known so far.

Each rule names a suite (or any), a pattern for the test id and one for what pytest said, and
the cause: a short category, then why a just-in-time proxy cannot or should not make the test
pass. The first rule that matches wins, so the narrow rules come first. A failure no rule
matches is shown as "not classified yet": look at it (the run's pytest.log and pgwarden.log are
kept), then add a rule here. Rules for failures that no longer happen do no harm, but prune them
when the cause is gone from pgwarden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANOTHER_DATABASE = (
    "the test connects to a database it made itself; a grant is for its "
    "target's one database, and pgwarden answers 3D000 naming it. Cannot: each database is a "
    "target of its own, requested and granted on its own"
)
ANOTHER_USER = (
    "the test creates a database role and logs in as it; pgwarden's users are the "
    "policy's, never the database's roles, so the login is refused like any unknown user "
    "(28P01). Cannot: logging in as an arbitrary role is what pgwarden exists to prevent"
)


@dataclass(frozen=True)
class Cause:
    category: str  # a few words, to group the tests by
    why: str  # what happens, and why a JIT proxy cannot or should not make the test pass


@dataclass(frozen=True)
class Rule:
    suite: str | None  # None: any suite
    test: str  # regular expression searched in the test id
    said: str  # regular expression searched in what pytest said
    cause: Cause


UNKNOWN = Cause("not classified yet", "see the run's pytest.log and pgwarden.log")


RULES: tuple[Rule, ...] = (
    Rule(
        None,
        "",
        r'role "boltzmann" already exists',
        Cause(
            "another user (left behind)",
            "an earlier variant of this test failed (another user) before it dropped the role "
            "it created, so this one cannot create it again",
        ),
    ),
    Rule(None, "", r"your grant \w+ is for database", Cause("another database", ANOTHER_DATABASE)),
    Rule(
        None,
        "",
        r'startup setting "replication" is refused',
        Cause(
            "replication connection",
            "refused (42501), so the test skips itself. Should not: a replication stream "
            "bypasses the per-query audit and carries every change of the cluster, whatever "
            "the access level",
        ),
    ),
    Rule(
        None,
        "",
        r"NOTICE: +pgwarden: ",
        Cause(
            "login notice",
            "pgwarden tells the grant's end time in a NoticeResponse at login; libpq prints a "
            "notice that arrives before the connection is ready on stderr, and the test wants a "
            "child process's stderr empty. A product choice, not a protocol fault: the notice "
            "tells the user when access ends; with `proxy.login_notice: false` these pass",
        ),
    ),
    Rule(
        "asyncpg",
        r"test_executemany_timeout$",
        r"Lists differ",
        Cause(
            "dropped cancel",
            "the client times out and cancels while it is still sending a pipeline of Bind/"
            "Execute without its Sync. pgwarden forwards a CancelRequest only while it counts a "
            "Query, Sync or FunctionCall awaiting its ReadyForQuery (Session.cancel_running_query"
            ", relay.busy), so it drops this one though the backend is executing the rows; the "
            "batch runs on and its Sync commits it, and the test finds every row where directly "
            "none (directly the INSERT is cancelled in PostgreSQL's log; through pgwarden it "
            "never is). Measured on 2026-12-06: asyncpg executemany of 128 rows of "
            "`pg_sleep(0.1) || $1` with timeout=0.5 on a fresh connection left 128 rows in 6 "
            "rounds of 6 through pgwarden, 0 directly. Fixed in 16d8f36 (a cancel is forwarded "
            "whatever runs); should it show again, it is a regression",
        ),
    ),
    Rule(
        None,
        "",
        r"canceling statement due to user request",
        Cause(
            "late cancel",
            "a statement after a timed-out one is cancelled. pgwarden closes the client's "
            "cancel connection at once and sends its own CancelRequest upstream in the "
            "background (proxy/session/opening.py, _cancel_upstream); PostgreSQL closes it only "
            "after it has signalled the backend. A client that waits for that close (libpq's "
            "PQcancel, psycopg, asyncpg) goes on with its next statement, and the signal can "
            "land on that one. Measured on 2026-12-06 (psycopg 3: a thread calls conn.cancel() "
            "near the end of `select pg_sleep(0.006)`, then `select pg_sleep(0.03)` runs): the "
            "next statement was cancelled in 18-38 rounds of 150 through pgwarden (3 runs), "
            "never directly (2 runs). Fixed in 16d8f36 (the client's cancel connection closes "
            "once the upstream one has); should it show again, it is a regression",
        ),
    ),
    Rule(
        "pg8000",
        r"(?i)applicati\w*name",
        "",
        Cause(
            "identity in application_name",
            "pg_stat_activity shows `pgwarden:<user>:<grant> <name>` "
            "(proxy.identity_in_application_name, on by default), so that a DBA sees who is "
            "behind a shared role. Should not by default; with the option off the test passes",
        ),
    ),
    Rule(
        "pg8000",
        r"(?i)(password_bytes|bytespassword|bytes_password)",
        "",
        Cause("another user", ANOTHER_USER),
    ),
    Rule(
        "psycopg2",
        r"TestConnectionInfo::test_user$",
        "",
        Cause(
            "mapped role",
            "the connection's user is the pgwarden user, the session's (`select user`) the "
            "access level's role. Cannot: pgwarden logs in upstream as the mapped role by design",
        ),
    ),
    Rule(
        "asyncpg",
        r"test_executemany_server_failure_during_writes$",
        "",
        Cause(
            "timing",
            "the server's early error (row 2 of 128 pipelined rows of 32 KB) reaches the client "
            "later through one more hop, so it has often sent every row before it notices; the "
            "outcome (UniqueViolation, nothing inserted, the connection usable) is the same. "
            "Measured on 2026-12-06 with the test's loop, 10 runs each: directly the client "
            "stopped after 14-22 rows; through pgwarden after 62-128 (all 128 in 8 runs), the "
            "query audit on or off alike; with pgwarden on asyncio's own loop instead of uvloop "
            "after 46-126. The test passes through pgwarden now and then, through pgbouncer 9 "
            "runs of 10. A proxy cannot promise the direct timing; uvloop reading a busy client "
            "socket in long batches before it turns to the upstream one widens the gap",
        ),
    ),
    Rule(
        "asyncpg",
        r"test_pool_config_persistence$",
        "",
        Cause(
            "flaky",
            "asyncpg's `unexpected connection_lost()` while a pool churns 100 connections "
            "(max_queries=1); run alone it failed directly too, 1 run of 5",
        ),
    ),
)


def cause_of(suite: str, test: str, message: str) -> Cause:
    """The known cause of `test` failing through pgwarden, or UNKNOWN."""
    for rule in RULES:
        if rule.suite not in (None, suite):
            continue
        if re.search(rule.test, test) and re.search(rule.said, message):
            return rule.cause
    return UNKNOWN
