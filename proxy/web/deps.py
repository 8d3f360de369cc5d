"""What the console needs besides the API's context, given by the runtime when it builds it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final

from aiohttp import web

from proxy.identity.record import SignInAudit

# How long a console session opened with an API token lasts (an SSO one: `identity.oidc`'s
# session_ttl). A working day: long enough not to interrupt an approver, short enough that a
# forgotten browser does not stay signed in overnight.
TOKEN_SESSION_TTL: Final = timedelta(hours=8)


@dataclass(frozen=True, slots=True)
class ConsoleDeps:
    audit: SignInAudit  # console sign-ins and sign-outs with an API token are audited like SSO's
    audit_files: Callable[[], list[Path]]  # this server's audit logs, for session transcripts
    token_session_ttl: timedelta = TOKEN_SESSION_TTL


DEPS: Final = web.AppKey("console_deps", ConsoleDeps)
