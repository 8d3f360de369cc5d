"""A replica's memory of the active grants, so that logins need not wait on a distant store.

With a PostgreSQL store each login would otherwise read the database on the event loop, several
times (the target's grants, the user's other grants, again at SCRAM's last step). Instead the
change feed (`proxy/cluster/feed.py`) keeps here every active grant and its verifier, with the
store's change counter they were read at (`version`), and tells of every newer counter it hears
of (NOTIFY) or this process commits (`saw`).

Which answer a login gets (`GrantService.login_decision`):

- **current**: the feed is listening, the snapshot is at least as new as every change heard of,
  and it was confirmed by the store within `CONFIRM_WITHIN` (the feed reconciles every second,
  so a lost notification costs at most that): answered from memory, nothing waits;
- **otherwise**, the store is read as before; and if the store cannot be reached, the snapshot
  is used while it is younger than `max_staleness` (`last_known`): logins go on through a short
  outage of the state database, then are refused (fail closed), since a revocation made
  meanwhile on another replica cannot be seen.

Thread-safe: the feed's thread writes, the event loop and the store threads read.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from proxy.clock import Clock
from proxy.grants.requests import ActiveGrant
from proxy.policy.models import TargetName, UserName

# Seconds: a snapshot the store confirmed longer ago than this is not trusted while the store
# answers (the feed confirms it every second; twice that allows one late round).
CONFIRM_WITHIN: Final = 2.0

Key = tuple[UserName, TargetName]


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int  # the store's change counter when the grants were read
    grants: Mapping[Key, tuple[ActiveGrant, ...]]


class GrantCache:
    """Active grants by (user, target) as last read, and how far that can be trusted."""

    def __init__(self, clock: Clock, max_staleness: float) -> None:
        self._clock, self.max_staleness = clock, max_staleness
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._known = 0  # the highest change counter committed here or announced
        self._listening = False
        self._confirmed = -math.inf  # monotonic time the store last vouched for the snapshot

    def saw(self, version: int) -> None:
        """A change counter committed here or announced by another replica."""
        with self._lock:
            self._known = max(self._known, version)

    def listening(self, live: bool) -> None:
        """Whether the feed hears announcements now (False: its connection is gone)."""
        self._listening = live

    def load(self, version: int, grants: Iterable[ActiveGrant]) -> None:
        """A fresh read of every active grant, at counter `version`."""
        by_key: dict[Key, list[ActiveGrant]] = {}
        for grant in grants:
            by_key.setdefault((grant.user, grant.target), []).append(grant)
        snapshot = Snapshot(version, {key: tuple(found) for key, found in by_key.items()})
        with self._lock:
            self._snapshot, self._known = snapshot, max(self._known, version)
            self._confirmed = self._clock.monotonic()

    def confirm(self, version: int) -> bool:
        """The store's counter is `version`: True if the snapshot is that (now confirmed),
        False if it must be read again."""
        with self._lock:
            self._known = max(self._known, version)
            if self._snapshot is None or self._snapshot.version != version:
                return False
            self._confirmed = self._clock.monotonic()
            return True

    @property
    def known(self) -> int:
        return self._known

    @property
    def version(self) -> int | None:
        snapshot = self._snapshot
        return None if snapshot is None else snapshot.version

    def is_current(self) -> bool:
        """Whether logins may be answered from memory while the store answers."""
        snapshot = self._snapshot
        return (
            self._listening
            and snapshot is not None
            and snapshot.version >= self._known
            and self.age() <= CONFIRM_WITHIN
        )

    def current(self, user: UserName, target: TargetName) -> tuple[ActiveGrant, ...] | None:
        """The grants of `user` on `target` if the memory is current, else None (read the
        store)."""
        snapshot = self._snapshot
        if snapshot is None or not self.is_current():
            return None
        return snapshot.grants.get((user, target), ())

    def last_known(self, user: UserName, target: TargetName) -> tuple[ActiveGrant, ...] | None:
        """For when the store cannot be read: the grants as last read, if that was less than
        `max_staleness` ago; else None (refuse)."""
        snapshot = self._snapshot
        if snapshot is None or self.age() > self.max_staleness:
            return None
        return snapshot.grants.get((user, target), ())

    def age(self) -> float:
        """Seconds since the store last vouched for the snapshot (inf before the first)."""
        return self._clock.monotonic() - self._confirmed
