"""A client connection while it logs in, and what a successful login established."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.grants.requests import ActiveGrant
from proxy.net.peer import Peer
from proxy.policy.models import TargetName, UserName
from proxy.wire import MessageReader, Settings, StartupMessage, StartupParser
from proxy.wire.limits import MAX_PREAUTH_MESSAGE_LENGTH


@dataclass(eq=False)
class ClientConnection:
    """A client connection during login."""

    peer: Peer
    source: str
    tls: bool = False
    parser: StartupParser = field(default_factory=StartupParser)
    reader: MessageReader = field(
        default_factory=lambda: MessageReader(max_length=MAX_PREAUTH_MESSAGE_LENGTH)
    )


@dataclass(frozen=True, slots=True)
class Login:
    """An authenticated client: who, for which grant, and what it asked of the session.

    `settings` are the run-time settings the client asked for (`options` included, names
    lowercased), already checked against what pgwarden refuses."""

    user: UserName
    target: TargetName
    grant: ActiveGrant
    startup: StartupMessage
    settings: Settings = ()

    @property
    def application_name(self) -> str:
        """What the client called itself (its startup parameter, or `-c` in options)."""
        return dict(self.settings).get("application_name", "")
