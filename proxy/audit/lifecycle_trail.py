"""Which lifecycle records took effect: pairing write-ahead records with their outcomes.

Since log format 2, pgwarden writes the records of a lifecycle action (a request, an approval, a
credential issued, a revocation, ...) *before* the state-store commit that makes it take effect,
then one `lifecycle.outcome` record naming the seqs it settles: committed, or rolled back with
the error. `LifecycleTrail` follows a chain record by record and tells `audit verify` which
lifecycle records were rolled back, and which no outcome ever settled: written just before
pgwarden stopped (a crash between the record and the commit), so not known to have taken
effect. Neither is tampering; both are reported, not failed. Records of a format-1 run (written
after the commit, with no outcome) are taken as they are.
"""

from __future__ import annotations

from typing import Final

from proxy.audit.records import Record

# The kinds a lifecycle action writes ahead of its commit (`runtime/auditing.py`, and the token
# commands' own chain, `commands/token_audit.py`, which `store migrate` writes too; sign-ins:
# `runtime/identity_audit.py`).
LIFECYCLE_KINDS: Final = frozenset({
    "request.created", "request.approved", "grant.activated", "request.denied",
    "request.cancelled", "request.lapsed", "credential.issued", "grant.expired", "grant.revoked",
    "token.created", "token.revoked", "state.migrated",
    "identity.signed_in", "identity.signed_out", "identity.person_removed",  # proxy/identity
})  # fmt: skip
WRITE_AHEAD_FORMAT: Final = 2
# Records awaiting their outcome at once: a handful per action in flight; past this, the oldest
# are counted unsettled (a log that never settles them is reported, not held in memory).
MAX_PENDING: Final = 10_000


class LifecycleTrail:
    """Lifecycle records seen, and the outcomes that settle them (see the module docstring)."""

    def __init__(self) -> None:
        self.write_ahead = False  # the current run writes lifecycle records ahead
        self.pending: dict[int, None] = {}  # seqs awaiting an outcome, oldest first
        self.lost: list[int] = []  # seqs no outcome can settle any more
        self.rolled_back: list[int] = []

    def see(self, record: Record) -> None:
        if record.kind == "audit.opened":
            self._run_ends()
            version = record.body.get("format")
            self.write_ahead = isinstance(version, int) and version >= WRITE_AHEAD_FORMAT
        elif record.kind == "lifecycle.outcome":
            self._settle(record)
        elif record.kind in LIFECYCLE_KINDS and self.write_ahead:
            self.pending[record.seq] = None
            if len(self.pending) > MAX_PENDING:
                oldest = next(iter(self.pending))
                del self.pending[oldest]
                self.lost.append(oldest)

    def unsettled(self) -> tuple[int, ...]:
        """Seqs that no outcome settled, in order (those still pending at the end included)."""
        return (*self.lost, *self.pending)

    def _settle(self, record: Record) -> None:
        first, last = record.body.get("first_seq"), record.body.get("last_seq")
        if not isinstance(first, int) or not isinstance(last, int):
            return
        settled = [seq for seq in self.pending if first <= seq <= last]
        for seq in settled:
            del self.pending[seq]
        if record.body.get("committed") is False:
            self.rolled_back.extend(settled)

    def _run_ends(self) -> None:
        # A new run opened the log: what the last one left pending can no longer be settled.
        self.lost.extend(self.pending)
        self.pending.clear()
