"""Concurrent approvers on a PostgreSQL state store: tests/unit/grants/test_concurrency.py's
thread races, each of several `PostgresStore`s (pools of their own, as several pgwarden servers
would have) with every thread on its own connection. Its test with separate processes is
SQLite's: to PostgreSQL a process is one more connection, as a thread here is."""

from tests.unit.grants.test_concurrency import (
    test_approve_racing_cancel_leaves_one_consistent_outcome,
    test_fifty_concurrent_approvers_reach_exactly_the_quorum,
)

__all__ = [
    "test_approve_racing_cancel_leaves_one_consistent_outcome",
    "test_fifty_concurrent_approvers_reach_exactly_the_quorum",
]
