"""Enforcement: every session ends the moment its grant ends or stops being valid.

One loop, ticking at least every `TICK` seconds (and waking exactly at the earliest deadline),
does for every live session:

- **deadline**: a session's deadline is its grant's end, timed on the monotonic clock from login
  (`Session.deadline`): past it, the session ends with "expired at ..."; a stalled loop that wakes
  late ends it at once; a wall-clock jump moves nothing;
- **warnings**: NoticeResponses at the configured offsets before the deadline ("your read-only
  access to "orders" ends at 14:05:00 UTC (in 5 minutes)"), sent at a message boundary;
- **long sessions**: a session open longer than the threshold is reported once;
- **reconciliation** (the guarantee behind the timers): when the store's change counter moves or
  the policy is replaced, and at least every `RECONCILE_INTERVAL` anyway, each session's grant is
  read again: revoked → ended at once ("revoked by carol: ..."); user, target or access level gone
  from the policy → ended at once (reading the grant revokes it, by "<policy>"). Store reads run
  in a thread, off the event loop; while the store cannot be read, the policy alone decides.

The relay also checks the deadline on every chunk from the client, so nothing sent after the
deadline is forwarded even between two ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from proxy.clock import Clock
from proxy.errors import PgwardenError
from proxy.grants.lifecycle import GrantService, RequestNotFound
from proxy.grants.requests import POLICY_ACTOR, AccessRequest, RequestId, RequestState
from proxy.grants.store_watch import StateStoreUnavailable
from proxy.policy.models import AccessLevelName, Policy, TargetName, UserName
from proxy.session.registry import SessionRegistry
from proxy.session.session import Ending, EndReason, Session, SessionInfo

log = logging.getLogger(__name__)

TICK = 0.1  # seconds between checks at the latest: revocation reaches sessions well within 1 s
RECONCILE_INTERVAL = 1.0  # seconds: a full re-read of every session's grant at least this often
MIN_SLEEP = 0.005  # never spin


@dataclass(frozen=True, slots=True)
class EnforcementSettings:
    warn_before: tuple[float, ...] = (300.0, 60.0)  # seconds before the deadline
    long_session_after: float = 8 * 3600.0


class Enforcer:
    """Ends sessions at their deadline, on revocation and on removal from the policy."""

    def __init__(
        self,
        registry: SessionRegistry[Session],
        grants: GrantService,
        policy: Callable[[], Policy],
        clock: Clock,
        *,
        settings: EnforcementSettings = EnforcementSettings(),
        on_long_session: Callable[[Session], None] | None = None,
        store_work: Executor | None = None,
    ) -> None:
        self._registry = registry
        self._grants = grants
        self._policy = policy
        self._clock = clock
        self._settings = settings
        self._on_long_session = on_long_session
        self._store_work = store_work  # its owner waits for it before closing the store
        self._last_changes: int | None = None
        self._last_policy: Policy | None = None
        self._last_reconcile = -math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken: asyncio.Event | None = None

    async def run(self) -> None:
        """Check forever (until cancelled); a failed check is logged and retried."""
        self._loop, self._woken = asyncio.get_running_loop(), asyncio.Event()
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("enforcement check failed; retrying")
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that comes
            # as the event is set (a wake), and this task would never end (bpo-42130).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._sleep_time()):
                    await self._woken.wait()
            self._woken.clear()

    def wake(self) -> None:
        """Check now, not at the next tick: another replica's change was announced (its NOTIFY
        reached `proxy/cluster/feed.py`). Safe from any thread; before `run`, nothing."""
        loop, woken = self._loop, self._woken
        if loop is not None and woken is not None:
            loop.call_soon_threadsafe(woken.set)

    async def check(self) -> None:
        """One round: deadlines, warnings, long sessions, then reconciliation when due."""
        sessions = list(self._registry)
        now = self._clock.monotonic()
        for session in sessions:
            self._check_time(session, now)
        if sessions and await self._reconcile_due():
            await self.reconcile([s for s in sessions if s.ending is None])

    async def reconcile(self, sessions: Sequence[Session]) -> None:
        """Re-read each session's grant (in a thread) and end those no longer valid."""
        self._last_reconcile = self._clock.monotonic()
        policy = self._policy()
        infos = [session.info for session in sessions]
        loop = asyncio.get_running_loop()
        verdicts = await loop.run_in_executor(self._store_work, self._judge_all, infos, policy)
        for session, ending in zip(sessions, verdicts, strict=True):
            if ending is not None:
                session.terminate(ending)

    def _check_time(self, session: Session, now: float) -> None:
        if session.ending is not None:
            return
        remaining = session.deadline - now
        if remaining <= 0:
            session.terminate(session.expiry_ending())
            return
        self._warn(session, remaining)
        self._report_if_long(session, now)

    def _warn(self, session: Session, remaining: float) -> None:
        window = session.deadline - session.started
        # Offsets longer than the whole session would be stale news at login: skip them. Several
        # offsets passed since the last check (a stall) make one notice, not a burst.
        due = [
            offset
            for offset in self._settings.warn_before
            if remaining <= offset < window and offset not in session.warnings_sent
        ]
        if due and session.notify(warning_message(session.info, remaining)):
            session.warnings_sent.update(due)

    def _report_if_long(self, session: Session, now: float) -> None:
        if session.reported_long or now - session.started < self._settings.long_session_after:
            return
        session.reported_long = True
        log.warning(
            "session %s of %r to %r has been open for more than %.0f s",
            session.session_id, session.info.user, session.info.target,
            self._settings.long_session_after,
        )  # fmt: skip
        if self._on_long_session is not None:
            self._on_long_session(session)

    async def _reconcile_due(self) -> bool:
        loop = asyncio.get_running_loop()
        changes: int | None
        try:
            changes = await loop.run_in_executor(self._store_work, self._grants.changes)
        except StateStoreUnavailable as exc:  # logged by the store; the policy still decides
            log.debug("change counter not read: %s", exc)
            changes = self._last_changes
        policy = self._policy()
        due = (
            changes != self._last_changes
            or policy is not self._last_policy
            or self._clock.monotonic() - self._last_reconcile >= RECONCILE_INTERVAL
        )
        self._last_changes, self._last_policy = changes, policy
        return due

    def _judge_all(self, infos: list[SessionInfo], policy: Policy) -> list[Ending | None]:
        return [self._judge(info, policy) for info in infos]

    def _judge(self, info: SessionInfo, policy: Policy) -> Ending | None:
        try:
            request = self._grants.get(RequestId(info.grant_id))
        except RequestNotFound:
            return Ending(EndReason.REVOKED, _gone_message(info), detail="grant not found")
        except PgwardenError as exc:
            # The store, or the audit log it records to first, refuses to settle what is due: the
            # policy still decides here, and the deadline still ends the session on time.
            log.debug("grant %s not re-read: %s", info.grant_id, exc)
            return _removed(info, policy)
        return judge(info, request, policy)

    def _sleep_time(self) -> float:
        now = self._clock.monotonic()
        deadlines = [s.deadline - now for s in self._registry if s.ending is None]
        return max(MIN_SLEEP, min([TICK, *deadlines]))


def judge(info: SessionInfo, request: AccessRequest, policy: Policy) -> Ending | None:
    """Whether a live session must end now for a reason other than time (pure)."""
    if request.state is RequestState.REVOKED and request.closed_by == POLICY_ACTOR:
        return Ending(EndReason.REMOVED, _gone_message(info), detail=request.close_reason or "")
    if request.state is RequestState.REVOKED:
        by = request.closed_by or "an administrator"
        why = f": {request.close_reason}" if request.close_reason else ""
        message = (
            f'pgwarden: access to "{info.target}" ({info.access_level}) was revoked by {by}{why}'
        )
        return Ending(EndReason.REVOKED, message, detail=f"revoked by {by}")
    return _removed(info, policy)  # expiry is the deadline's job, on the monotonic clock


def _removed(info: SessionInfo, policy: Policy) -> Ending | None:
    target, level = TargetName(info.target), AccessLevelName(info.access_level)
    if UserName(info.user) not in policy.users or policy.level(target, level) is None:
        return Ending(EndReason.REMOVED, _gone_message(info), detail="removed from the policy")
    return None


def warning_message(info: SessionInfo, remaining: float) -> str:
    at = info.grant_ends_at.strftime("%H:%M:%S UTC")
    return (
        f'pgwarden: your {info.access_level} access to "{info.target}" ends at {at} '
        f"(in {_humane(remaining)})"
    )


def _humane(seconds: float) -> str:
    if seconds >= 90:
        minutes = round(seconds / 60)
        return f"{minutes} minutes"
    whole = max(1, round(seconds))
    return f"{whole} second{'s' if whole != 1 else ''}"


def _gone_message(info: SessionInfo) -> str:
    return (
        f'pgwarden: access to "{info.target}" ({info.access_level}) is no longer granted '
        "by the policy"
    )
