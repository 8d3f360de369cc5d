"""The effective policy: the YAML policy with the people an identity provider signed in merged in.

A signed-in person is a policy user with the groups their provider gave at their last sign-in or
refresh, plus any the YAML gives a user of the same name. A person their provider said is gone
(`removed_at`, signin.py) is left out until they sign in again. Approval rules, admin groups and
auto-approval then apply to them unchanged.

The merge is computed once per change, not per call: `refresh()` (blocking: a store read) looks
at the store's change counter and re-reads the people only when it moved — every people write
moves it (store_identity.py), so another replica's sign-in is seen here too — and `__call__`
merges only when the YAML policy or the people changed since the last merge. The runtime calls
`refresh()` from housekeeping (once a second) and right after a sign-in here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

from proxy.grants.store import Store
from proxy.grants.store_identity import PersonRecord
from proxy.policy.models import Policy, User

log = logging.getLogger(__name__)


def merge(policy: Policy, people: tuple[PersonRecord, ...]) -> Policy:
    """`policy` with `people` as users (the union of their groups with the YAML's), but those
    removed at their provider."""
    present = [person for person in people if person.removed_at is None]
    if not present:
        return policy
    users = dict(policy.users)
    for person in present:
        known = users.get(person.user)
        groups = frozenset(person.groups) | (known.groups if known is not None else frozenset())
        users[person.user] = User(person.user, groups)
    return replace(policy, users=users)


class EffectivePolicy:
    """`policy()` with people: a callable like `PolicyHolder.current`'s, and as cheap."""

    def __init__(self, base: Callable[[], Policy], store: Store) -> None:
        self._base, self._store = base, store
        self._lock = threading.Lock()
        self._people: tuple[PersonRecord, ...] = ()
        self._seen: int | None = None
        self._merged: tuple[Policy, tuple[PersonRecord, ...], Policy] | None = None

    def __call__(self) -> Policy:
        base, people = self._base(), self._people
        merged = self._merged
        if merged is not None and merged[0] is base and merged[1] is people:
            return merged[2]
        policy = merge(base, people)
        self._merged = (base, people, policy)  # one assignment: threads see old or new
        return policy

    def refresh(self) -> None:
        """Re-read the people if the store changed since the last read (blocking)."""
        with self._lock:
            changes = self._store.changes()
            if changes == self._seen:
                return
            with self._store.read() as tx:
                people = tx.people()
            if people != self._people:
                log.info("people from the identity provider: %d", len(people))
                self._people = people
            self._seen = changes
