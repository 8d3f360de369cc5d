"""Hot reload: the policy in force, replaced as a whole when its file changes to a valid policy.

`PolicyHolder.current` is one reference to an immutable `Policy`; a reload builds the new policy
completely and then rebinds that reference, which is atomic, so a reader (the event loop, a
request handler) sees the old policy or the new one, never a mixture, and needs no lock.

An edit that does not validate, a half-written file (an editor's save caught midway), a file that
disappeared or became unreadable: all are rejected, logged with every problem, counted, and the
policy already in force stays in force (SECURITY.md row 42). A server calls `check_for_changes()`
about once a second — a `stat()` and nothing more unless the file's identity changed — and
`reload()` on SIGHUP, which rereads unconditionally (so an edit that kept the size and landed in
the same mtime tick still takes effect).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from proxy.policy.models import Policy
from proxy.policy.policy_file import PolicyError, PolicyUnreadable, load_policy, unheld_names
from proxy.policy.yaml_strict import Problem

logger = logging.getLogger(__name__)


class ReloadOutcome(StrEnum):
    APPLIED = "applied"  # a valid policy replaced the one in force
    REJECTED = "rejected"  # the file is invalid; the old policy stays
    UNREADABLE = "unreadable"  # missing or unreadable; the old policy stays


@dataclass(frozen=True, slots=True)
class ReloadResult:
    outcome: ReloadOutcome
    source: str
    problems: tuple[Problem, ...] = ()

    @property
    def applied(self) -> bool:
        return self.outcome is ReloadOutcome.APPLIED


# What identifies one version of the file without reading it. The inode and device change when an
# editor saves by rename; size and mtime when it writes in place; ctime catches a same-size write
# within one mtime tick that was followed by a metadata change.
FileSignature = tuple[int, int, int, int, int]

ReloadHook = Callable[[ReloadResult], None]


class PolicyHolder:
    """The current policy of one file, and the machinery to replace it safely."""

    def __init__(
        self, path: Path, policy: Policy, *, on_reload: ReloadHook | None = None,
        people_from_identity: bool = False,
    ) -> None:  # fmt: skip
        """Hold `policy`, already loaded from `path` (see `open` for the usual way in);
        `people_from_identity`: it is read as `load_policy` says, at every reload too."""
        self._path = path
        self._people_from_identity = people_from_identity
        self._policy = policy
        self._seen = _signature(path)
        self._on_reload = on_reload
        self._lock = threading.Lock()  # one reload at a time (timer and SIGHUP may overlap)
        self._counts: Counter[ReloadOutcome] = Counter()

    @classmethod
    def open(
        cls, path: Path, *, on_reload: ReloadHook | None = None, people_from_identity: bool = False
    ) -> PolicyHolder:
        """Load the policy at startup; raises `PolicyError`: a server never starts without one."""
        signature = _signature(path)
        policy = load_policy(path, people_from_identity=people_from_identity)
        holder = cls(path, policy, on_reload=on_reload, people_from_identity=people_from_identity)
        holder._seen = signature  # the version read, even if the file changed since
        if people_from_identity:
            _log_unheld(policy)
        return holder

    @property
    def current(self) -> Policy:
        return self._policy

    @property
    def path(self) -> Path:
        return self._path

    @property
    def counts(self) -> Mapping[ReloadOutcome, int]:
        """Reloads so far by outcome, for the metrics."""
        return dict(self._counts)

    def check_for_changes(self) -> ReloadResult | None:
        """Reload if the file changed since it was last read; `None` when it did not."""
        if _signature(self._path) == self._seen:
            return None
        return self.reload()

    def reload(self) -> ReloadResult:
        """Reread the file now; the new policy replaces the old one only if it is valid."""
        with self._lock:
            # Stat before reading: if the file changes while we read, the next check sees a new
            # signature and reads it again, rather than believing the old content is current.
            self._seen = _signature(self._path)
            result = self._load()
            self._counts[result.outcome] += 1
        self._notify(result)
        return result

    def _load(self) -> ReloadResult:
        source = str(self._path)
        try:
            policy = load_policy(self._path, people_from_identity=self._people_from_identity)
        except PolicyUnreadable as exc:
            logger.warning("policy %s not reloaded, keeping the policy in force: %s", source, exc)
            return ReloadResult(ReloadOutcome.UNREADABLE, source, exc.problems)
        except PolicyError as exc:
            logger.error(
                "policy %s rejected, keeping the policy in force: %d problem(s): %s",
                source,
                len(exc.problems),
                "; ".join(str(p) for p in exc.problems),
            )
            return ReloadResult(ReloadOutcome.REJECTED, source, exc.problems)
        self._policy = policy  # the one atomic step: readers see old or new, never a mixture
        logger.info(
            "policy %s reloaded: %d target(s), %d user(s)",
            source,
            len(policy.targets),
            len(policy.users),
        )
        if self._people_from_identity:
            _log_unheld(policy)
        return ReloadResult(ReloadOutcome.APPLIED, source)

    def _notify(self, result: ReloadResult) -> None:
        if self._on_reload is None:
            return
        try:
            self._on_reload(result)
        except Exception:
            # A broken metrics hook must not stop policy reloads.
            logger.exception("policy reload hook failed")


def _log_unheld(policy: Policy) -> None:
    """Say which names the identity provider must supply: where a typo in the policy shows."""
    users, groups = unheld_names(policy)
    if users or groups:
        logger.warning(
            "policy %s names what no user in users: holds, expected from the identity provider "
            "(check the spelling against the provider's): users %s; groups %s",
            policy.source, ", ".join(sorted(users)) or "none", ", ".join(sorted(groups)) or "none",
        )  # fmt: skip


def _signature(path: Path) -> FileSignature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
