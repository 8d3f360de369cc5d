"""ErrorResponse and NoticeResponse: a list of (field code, value) pairs.

The body is fields, each a non-zero code byte and a String, ended by a zero byte. Fields keep their
order and are not interpreted on decode: an upstream ErrorResponse with no fields at all decodes
(the session decides what to tell the client), but one without its terminator does not.

pgwarden sends errors with the named constructors (`ErrorResponse.fatal`, `.error`, `.from_error`),
which fill in what libpq and JDBC read: severity (`S`, localized, and `V`, never localized),
SQLSTATE (`C`) and message (`M`), optionally detail (`D`) and hint (`H`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Self

from proxy.errors import PgwardenError, Severity
from proxy.wire.errors import LocalProtocolError
from proxy.wire.payload import PayloadReader, cstring, message
from proxy.wire.types import ERROR_RESPONSE, NOTICE_RESPONSE

# Field codes (PostgreSQL docs, "Error and Notice Message Fields").
SEVERITY: Final = "S"
SEVERITY_NONLOCALIZED: Final = "V"
SQLSTATE: Final = "C"
MESSAGE: Final = "M"
DETAIL: Final = "D"
HINT: Final = "H"

Fields = tuple[tuple[str, str], ...]


def _encode_fields(fields: Fields) -> bytes:
    parts = []
    for code, text in fields:
        if len(code) != 1 or code == "\0" or ord(code) > 0xFF:
            raise LocalProtocolError(f"invalid field code {code!r}")
        parts.append(code.encode("latin-1") + cstring(text))
    parts.append(b"\0")
    return b"".join(parts)


def _decode_fields(payload: bytes, what: str) -> Fields:
    reader = PayloadReader(payload, what)
    fields = []
    # Each field consumes at least two bytes, so the loop is bounded by the payload size.
    while code := reader.uint8():
        fields.append((chr(code), reader.cstring()))
    reader.finish()
    return tuple(fields)


def _build(severity: str, sqlstate: str, text: str, detail: str | None, hint: str | None) -> Fields:
    severity = str(severity)  # a Severity member becomes the plain string decode() returns
    fields = [(SEVERITY, severity), (SEVERITY_NONLOCALIZED, severity)]
    fields += [(SQLSTATE, sqlstate), (MESSAGE, text)]
    if detail is not None:
        fields.append((DETAIL, detail))
    if hint is not None:
        fields.append((HINT, hint))
    return tuple(fields)


class _FieldsMessage:
    """Accessors shared by ErrorResponse and NoticeResponse."""

    __slots__ = ()
    fields: Fields

    def get(self, code: str) -> str | None:
        """The first value of field `code`, if present."""
        for field_code, text in self.fields:
            if field_code == code:
                return text
        return None

    @property
    def severity(self) -> str | None:
        """The non-localized severity when present (Postgres 9.6+), else the localized one."""
        return self.get(SEVERITY_NONLOCALIZED) or self.get(SEVERITY)

    @property
    def sqlstate(self) -> str | None:
        return self.get(SQLSTATE)

    @property
    def message(self) -> str | None:
        return self.get(MESSAGE)


@dataclass(frozen=True, slots=True)
class ErrorResponse(_FieldsMessage):
    TYPE: ClassVar[int] = ERROR_RESPONSE
    fields: Fields

    def encode(self) -> bytes:
        return message(self.TYPE, _encode_fields(self.fields))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        return cls(_decode_fields(payload, "ErrorResponse"))

    @classmethod
    def fatal(
        cls, sqlstate: str, text: str, *, detail: str | None = None, hint: str | None = None
    ) -> Self:
        """A FATAL error: the connection ends after it (and no ReadyForQuery follows)."""
        return cls(_build(Severity.FATAL, sqlstate, text, detail, hint))

    @classmethod
    def error(
        cls, sqlstate: str, text: str, *, detail: str | None = None, hint: str | None = None
    ) -> Self:
        """An ERROR: the current command fails, the session goes on."""
        return cls(_build(Severity.ERROR, sqlstate, text, detail, hint))

    @classmethod
    def from_error(cls, exc: PgwardenError) -> Self:
        """The client-facing form of a pgwarden error. `exc.detail` is for the log only and is
        never sent."""
        return cls(_build(exc.severity, exc.sqlstate, exc.message, None, None))


@dataclass(frozen=True, slots=True)
class NoticeResponse(_FieldsMessage):
    TYPE: ClassVar[int] = NOTICE_RESPONSE
    fields: Fields

    def encode(self) -> bytes:
        return message(self.TYPE, _encode_fields(self.fields))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        return cls(_decode_fields(payload, "NoticeResponse"))

    @classmethod
    def warning(cls, sqlstate: str, text: str, *, detail: str | None = None) -> Self:
        return cls(_build("WARNING", sqlstate, text, detail, None))

    @classmethod
    def notice(cls, sqlstate: str, text: str, *, detail: str | None = None) -> Self:
        return cls(_build("NOTICE", sqlstate, text, detail, None))
