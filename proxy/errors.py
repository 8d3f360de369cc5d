"""The error hierarchy: every error a Postgres client can see carries a SQLSTATE and a severity.

`PgwardenError` is the root. Subsystems subclass it (the wire codec's protocol errors, SCRAM's
authentication errors, the policy's validation errors); the session layer turns any of them into an
`ErrorResponse` with one function, and anything else into a generic `XX000` so that internal details
reach the log, never the client.
"""

from __future__ import annotations

from enum import StrEnum


class Severity(StrEnum):
    """ErrorResponse severities that pgwarden emits (the `S`/`V` fields)."""

    ERROR = "ERROR"
    FATAL = "FATAL"


class PgwardenError(Exception):
    """An error with a client-facing SQLSTATE and message.

    `message` is what the client sees; `detail` is for the log only (an internal reason that must
    never be shown to an unauthenticated client).
    """

    sqlstate: str = "XX000"
    severity: Severity = Severity.FATAL

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        severity: Severity | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate
        if severity is not None:
            self.severity = severity
        self.detail = detail

    def __str__(self) -> str:
        if self.detail:
            return f"{self.message} ({self.detail})"
        return self.message
