"""Which query records have their outcome: pairing round trips with the outcomes that settle them.

Since log format 3, a session's round trip is one `query.batch` record (a FunctionCall, one
`query.function_call`), numbered `n` within its session and written before the database sees
it; its outcome comes later, in the `done` list of a later record of the same session (a batch,
a function call or a `query.done`). `QueryTrail` follows a chain record by record and tells
`audit verify` which query records no outcome settled: still running when the log was read, or
written just before pgwarden stopped (a crash loses the outcomes it had not written yet). That is
not tampering; it is reported, not failed. Records of format 1 and 2 runs (a `query.outcome` per
query) are taken as they are.
"""

from __future__ import annotations

from typing import Final

from proxy.audit.records import Record

ROUND_TRIP_KINDS: Final = frozenset({"query.batch", "query.function_call"})
ONE_RECORD_FORMAT: Final = 3
# Round trips awaiting their outcome at once: a few per live session; past this, the oldest are
# counted unsettled (a log that never settles them is reported, not held in memory).
MAX_PENDING: Final = 100_000
MAX_LOST_KEPT: Final = 1_000  # seqs of unsettled records kept to be named; the rest are counted


class QueryTrail:
    """Query records seen, and the outcomes that settle them (see the module docstring)."""

    def __init__(self) -> None:
        self.tracking = False  # the current run writes format-3 query records
        self.pending: dict[tuple[str, int], int] = {}  # (session, n) → seq, oldest first
        self.lost: list[int] = []  # seqs no outcome can settle any more (the first ones)
        self.lost_count = 0

    def see(self, record: Record) -> None:
        body = record.body
        if record.kind == "audit.opened":
            self._run_ends()
            version = body.get("format")
            self.tracking = isinstance(version, int) and version >= ONE_RECORD_FORMAT
            return
        if not self.tracking or not record.kind.startswith("query."):
            return
        session = body.get("session_id")
        if not isinstance(session, str):
            return
        for outcome in body.get("done") or ():
            if isinstance(outcome, dict) and isinstance(n := outcome.get("n"), int):
                self.pending.pop((session, n), None)
        if record.kind in ROUND_TRIP_KINDS and isinstance(n := body.get("n"), int):
            self.pending[(session, n)] = record.seq
            if len(self.pending) > MAX_PENDING:
                self._lose([self.pending.pop(next(iter(self.pending)))])

    def unsettled(self) -> tuple[int, tuple[int, ...]]:
        """How many query records no outcome settled, and the seqs of the first of them."""
        pending = sorted(self.pending.values())
        return self.lost_count + len(pending), (*self.lost, *pending)[:MAX_LOST_KEPT]

    def _run_ends(self) -> None:
        # A new run opened the log: what the last one left pending can no longer be settled.
        self._lose(sorted(self.pending.values()))
        self.pending.clear()

    def _lose(self, seqs: list[int]) -> None:
        self.lost_count += len(seqs)
        self.lost.extend(seqs[: MAX_LOST_KEPT - len(self.lost)])
