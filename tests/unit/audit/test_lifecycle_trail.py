"""Pairing write-ahead lifecycle records with their outcomes (`audit verify`'s report)."""

from __future__ import annotations

from typing import Any

from proxy.audit.lifecycle_trail import LifecycleTrail
from proxy.audit.records import GENESIS, Record


def record(seq: int, kind: str, **body: Any) -> Record:
    return Record(seq=seq, kind=kind, prev=GENESIS, mac=GENESIS, body={"kind": kind, **body})


def trail(*records: Record) -> LifecycleTrail:
    followed = LifecycleTrail()
    for each in records:
        followed.see(each)
    return followed


def opened(seq: int, version: int = 2) -> Record:
    return record(seq, "audit.opened", format=version)


def test_records_settled_by_a_committed_outcome_are_not_reported() -> None:
    followed = trail(
        opened(1), record(2, "request.created"), record(3, "query.simple"),
        record(4, "request.approved"), record(5, "grant.activated"),
        record(6, "lifecycle.outcome", first_seq=2, last_seq=2, committed=True, error=""),
        record(7, "lifecycle.outcome", first_seq=4, last_seq=5, committed=True, error=""),
    )  # fmt: skip
    assert (followed.unsettled(), followed.rolled_back) == ((), [])


def test_a_rolled_back_commit_names_its_records() -> None:
    followed = trail(
        opened(1), record(2, "grant.revoked"),
        record(3, "lifecycle.outcome", first_seq=2, last_seq=2, committed=False, error="disk"),
    )  # fmt: skip
    assert (followed.unsettled(), followed.rolled_back) == ((), [2])


def test_records_a_stopped_run_left_without_outcome_are_unsettled() -> None:
    followed = trail(
        opened(1), record(2, "credential.issued"),
        opened(3), record(4, "request.created"),
        record(5, "lifecycle.outcome", first_seq=2, last_seq=4, committed=True, error=""),
        record(6, "request.cancelled"),
    )  # fmt: skip
    # seq 2's run ended before any outcome (a later run cannot settle it); 6 is still pending.
    assert followed.unsettled() == (2, 6)


def test_records_of_a_format_1_run_need_no_outcome() -> None:
    followed = trail(opened(1, version=1), record(2, "request.created"), opened(3, version=1))
    assert followed.unsettled() == ()


def test_an_outcome_without_its_seqs_is_ignored() -> None:
    followed = trail(opened(1), record(2, "grant.expired"),
                     record(3, "lifecycle.outcome", committed=True))  # fmt: skip
    assert followed.unsettled() == (2,)
