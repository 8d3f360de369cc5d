"""SASLprep (RFC 4013) for passwords, the way PostgreSQL applies it.

SCRAM hashes the *prepared* password, so pgwarden must prepare it exactly as libpq and the
Postgres server do (`src/common/saslprep.c`), or a verifier we make would not match the proof a
psql user sends. Postgres's rules, which this module follows:

- a pure-ASCII string is returned unchanged (no ASCII character is mapped, and NFKC leaves
  ASCII alone; ASCII control characters are therefore *not* rejected on this path);
- otherwise: map non-ASCII spaces (C.1.2) to U+0020 and delete "commonly mapped to nothing"
  characters (B.1); an empty result is prohibited; check the mapped string for prohibited output
  (C.1.2, C.2.1, C.2.2, C.3-C.9), unassigned code points (A.1) and the bidi rule (RFC 3454
  section 6); the result is the NFKC normalisation of the mapped string. Postgres checks the
  mapped string rather than its normal form; we do the same on purpose, to agree with libpq.

Callers that want Postgres's fallback ("not valid for SASLprep → use the raw bytes") use
`prepare_password`; `saslprep` itself raises `SaslPrepError`.
"""

from __future__ import annotations

import stringprep
import unicodedata
from collections.abc import Callable

_PROHIBITED_TABLES: tuple[Callable[[str], bool], ...] = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,  # unassigned code points are prohibited, as for stored strings
)


class SaslPrepError(ValueError):
    """The string is not valid input for SASLprep (prohibited character, bad bidi, empty)."""


def saslprep(text: str) -> str:
    """The SASLprep'd form of `text`, following Postgres; `SaslPrepError` when prohibited."""
    if text.isascii():
        return text
    mapped = _map(text)
    if not mapped:
        raise SaslPrepError("empty after mapping")
    if any(_is_prohibited(char) for char in mapped):
        raise SaslPrepError("prohibited character")
    _check_bidi(mapped)
    return unicodedata.normalize("NFKC", mapped)


def prepare_password(password: str | bytes) -> bytes:
    """The bytes that SCRAM hashes for `password`, with Postgres's fallback to the raw bytes.

    Bytes that are not UTF-8, and strings that SASLprep prohibits, are used as they are (encoded
    as UTF-8 for `str`), as `pg_saslprep`'s callers in libpq and the server do.
    """
    raw = password if isinstance(password, bytes) else password.encode("utf-8")
    try:
        return saslprep(raw.decode("utf-8")).encode("utf-8")
    except (UnicodeDecodeError, SaslPrepError):
        return raw


def _map(text: str) -> str:
    """RFC 4013 section 2.1: non-ASCII spaces become U+0020, B.1 characters disappear."""
    out = []
    for char in text:
        if stringprep.in_table_c12(char):
            out.append(" ")
        elif not stringprep.in_table_b1(char):
            out.append(char)
    return "".join(out)


def _is_prohibited(char: str) -> bool:
    return any(table(char) for table in _PROHIBITED_TABLES)


def _check_bidi(text: str) -> None:
    """RFC 3454 section 6: RandALCat strings hold no LCat and start and end with RandALCat."""
    if not any(stringprep.in_table_d1(char) for char in text):
        return
    if any(stringprep.in_table_d2(char) for char in text):
        raise SaslPrepError("mixed right-to-left and left-to-right characters")
    if not (stringprep.in_table_d1(text[0]) and stringprep.in_table_d1(text[-1])):
        raise SaslPrepError("right-to-left string must start and end with a right-to-left char")
