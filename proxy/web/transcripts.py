"""The audit log as the console shows it: a grant's sessions, and one session's transcript.

Reads this server's audit files (every chain beside `paths.audit_log`: its replica's processes;
replicas sharing that directory too) through proxy/audit/transcript.py, in the API's thread pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from proxy.audit.transcript import SessionStart, Transcript, read_transcript, sessions_of_grant
from proxy.session.session import SessionInfo

GRANT_SESSIONS: Final = 20  # the latest sessions of one grant listed on its page


@dataclass(frozen=True, slots=True)
class Found:
    transcript: Transcript
    info: SessionInfo  # who ran it on what: what the visibility rules read (api.access)


def grant_sessions(files: Sequence[Path], grant_id: str, ever_active: bool) -> dict[str, Any]:
    """`found`: the grant's latest sessions in the log; `checked`: whether the log was read (a
    grant never active had none)."""
    if not ever_active:
        return {"found": [], "checked": False}
    found = sessions_of_grant(files, grant_id, limit=GRANT_SESSIONS)
    items = [
        {"session_id": s.start.session_id, "started_at": s.start.started_at,
         "ended_at": s.end.at if s.end is not None else None, "state": s.state.value,
         "statements": s.end.queries if s.end is not None else (s.queries or 0)}
        for s in found
    ]  # fmt: skip
    return {"found": items, "checked": True}


def session_transcript(files: Sequence[Path], session_id: str) -> Found | None:
    transcript = read_transcript(files, session_id)
    return None if transcript is None else Found(transcript, _info(transcript.start))


def _info(start: SessionStart) -> SessionInfo:
    return SessionInfo(
        start.session_id, start.user, start.target, start.access_level, start.grant_id,
        start.upstream_role, start.client_address, start.client_tls, start.application_name,
        start.started_at, start.grant_ends_at, start.backend_process_id,
    )  # fmt: skip
