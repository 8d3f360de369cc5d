"""Connections over an admission cap: the error they are told, and how each one is reported.

Postgres refuses a connection over `max_connections` only once it has read the startup packet
(after answering SSLRequest), with FATAL 53300 "sorry, too many clients already"; libpq then shows
that text. pgwarden does the same (handshake.py reads the startup packet of a refused connection
in a *refusing* slot), so `psql` shows `pgwarden: too many connections from 10.0.0.7 (limit 250)`
rather than "server sent an error response during SSL exchange".

Every refusal is counted (`connection_refused` → pgwarden_connections_refused_total{reason}) and
logged through the rate-limited `QuietLog`, so a flood of connections cannot flood the log.
"""

from __future__ import annotations

import logging

from proxy.errors import PgwardenError
from proxy.session.admission import Refusal
from proxy.session.context import ProxyContext
from proxy.session.quiet_log import held_back_note
from proxy.wire import sqlstate

log = logging.getLogger(__name__)


class AdmissionRefused(PgwardenError):
    """FATAL 53300 for a connection over a cap (already logged by `report`)."""

    sqlstate = sqlstate.TOO_MANY_CONNECTIONS

    def __init__(self, refusal: Refusal, source: str) -> None:
        super().__init__(refusal.message(source))
        self.refusal = refusal


def report(ctx: ProxyContext, source: str, refusal: Refusal, *, told: bool) -> None:
    """Count a refused connection and log it (rate-limited). `told`: it will get the 53300;
    otherwise it is closed without a word (even the refusals are over their cap)."""
    for observer in ctx.observers:
        observer.connection_refused(source, refusal.cap)
    if (held_back := ctx.quiet_log.admit(f"refused:{refusal.cap}")) is not None:
        how = "" if told else "; closed without a reply (too many refusals in progress)"
        log.warning(
            "connection from %s refused: %s%s%s",
            source, refusal.message(source), how, held_back_note(held_back),
        )  # fmt: skip
