"""Secrets never reach the audit log (SECURITY.md row 38): every string of every record passes here.

What is replaced by `***`:

- the string literal after the keyword PASSWORD, found by a small SQL scanner that knows the
  quoting rules ('...' with doubled quotes, E'...' with backslash escapes, U&'...', $$...$$ and
  $tag$...$tag$, comments, quoted identifiers) — so `CREATE/ALTER ROLE/USER ... [ENCRYPTED]
  PASSWORD '...'`, `OPTIONS (password '...')` and literal continuations are covered however they
  are quoted. The server's `standard_conforming_strings` is unknown here, so the text is scanned
  under both settings and the union of what each finds is redacted (redacting too much is safe,
  too little is not);
- SCRAM (`SCRAM-SHA-256$...`) and MD5 (`md5` + 32 hex digits) verifiers anywhere;
- `password=...` in conninfo strings (quoted or not, inside SQL literals too) and the password of
  `scheme://user:password@host` URIs;
- pgwarden's own temporary passwords (`known_secrets`, asked for at each redaction): every
  occurrence in the text left by the passes above, overlapping ones included, each stretch of
  them one `***`. A snapshot of them is indexed once (`known_secrets.py`), so that their number
  does not weigh on each redaction.

`password_parameters(sql)` tells whether a statement takes a password as a parameter
(`ALTER ROLE x PASSWORD $1`): the recorder then shows all of its Bind values as `***`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final

from mypy_extensions import mypyc_attr

from proxy.audit.known_secrets import (
    MIN_KNOWN_SECRET,  # noqa: F401  (read here by callers)
    KnownSecrets,
    Span,
    merge,
)
from proxy.audit.records import Fields, JSONValue

MASK: Final = "***"
MIN_SECRET_TEXT = 6  # no pattern below matches anything shorter (`a://:x@` is 7)
MEMO_MAX_TEXT = 64  # redactions of strings up to this long are remembered ...
MEMO_ENTRIES = 4096  # ... this many at a time
_SNAPSHOTS = (tuple, frozenset)  # immutable collections of known secrets: safe to memoize by

_SCRAM = re.compile(r"SCRAM-SHA-256\$[^\s'\"]*", re.IGNORECASE)
_MD5 = re.compile(r"(?<![0-9A-Za-z])md5[0-9a-f]{32}(?![0-9a-f])", re.IGNORECASE)
# password=value in a conninfo: quoted ('...', or ''...'' / \'...\' inside a SQL literal) up to
# the same quote not escaped by a backslash; unquoted up to whitespace or a lone quote (libpq
# reads an unquoted value up to whitespace; a doubled quote is one quote inside a SQL literal).
_CONNINFO = re.compile(
    r"""(?P<key>\bpassword\s*=\s*)(?!'\*\*\*')
        (?: (?P<q>''|\\'|') .*? (?:(?<!\\)(?P=q)|\Z)
          | (?:\\''|\\.|''|[^\s'\\])+ )""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)
# The scheme's length is bounded so that a long run like `a.a.a.a...` cannot make this quadratic.
_URI = re.compile(r"(?P<user>\b[a-z][a-z0-9+.-]{0,31}://[^\s/:@'\"]*):[^\s@/]*@", re.IGNORECASE)
_JSON_PASSWORD = re.compile(r'(?P<key>"password"\s*:\s*)"(?:[^"\\]|\\.)*"?', re.IGNORECASE)
# Every pattern above needs one of these in the text: most text has none, and one search says so.
_MAYBE_SECRET = re.compile(r"password|scram-sha-256\$|md5[0-9a-f]{32}|://", re.IGNORECASE)

# -- the SQL scanner ---------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_SPACE = re.compile(r"\s+")
_PARAM = re.compile(r"\$\d+")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_QUOTED_IDENT = re.compile(r'"(?:[^"]|"")*"?')
_STANDARD_BODY = re.compile(r"(?:[^']|'')*'?", re.DOTALL)
_ESCAPE_BODY = re.compile(r"(?:[^'\\]|''|\\.)*(?:'|\\?\Z)", re.DOTALL)


def _comment_end(sql: str, i: int) -> int:
    """End of the (nested) block comment starting at `i`."""
    depth, j = 0, i
    while j < len(sql):
        if sql.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif sql.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    return len(sql)


def _literal_end(sql: str, i: int, backslash_quotes: bool) -> int | None:
    """If a string constant starts at `i`, where it ends (the end of the text if unclosed)."""
    c = sql[i]
    if c in "Ee" and sql.startswith("'", i + 1):
        body = _ESCAPE_BODY.match(sql, i + 2)
    elif c in "Uu" and sql.startswith("&'", i + 1):
        body = _STANDARD_BODY.match(sql, i + 3)
    elif c in "NnBbXx" and sql.startswith("'", i + 1):
        body = (_ESCAPE_BODY if backslash_quotes else _STANDARD_BODY).match(sql, i + 2)
    elif c == "'":
        body = (_ESCAPE_BODY if backslash_quotes else _STANDARD_BODY).match(sql, i + 1)
    elif c == "$" and (tag := _DOLLAR_TAG.match(sql, i)) is not None:
        close = sql.find(tag.group(), tag.end())
        return len(sql) if close < 0 else close + len(tag.group())
    else:
        return None
    assert body is not None  # both patterns match the empty string
    return body.end()


def _scan(sql: str, backslash_quotes: bool) -> tuple[list[tuple[int, int]], bool]:
    """Spans of literals that follow PASSWORD, and whether a `$n` parameter follows one."""
    spans: list[tuple[int, int]] = []
    takes_param = False
    after_password = False
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i = _SPACE.match(sql, i).end()  # type: ignore[union-attr]
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline
        elif sql.startswith("/*", i):
            i = _comment_end(sql, i)
        elif (end := _literal_end(sql, i, backslash_quotes)) is not None:
            if after_password:  # stays set: a literal continued on the next line is redacted too
                spans.append((i, end))
            i = end
        elif (param := _PARAM.match(sql, i)) is not None:
            takes_param = takes_param or after_password
            after_password, i = False, param.end()
        elif c == '"':
            after_password, i = False, _QUOTED_IDENT.match(sql, i).end()  # type: ignore[union-attr]
        elif (word := _WORD.match(sql, i)) is not None:
            after_password, i = word.group().lower() == "password", word.end()
        else:  # `=` keeps the keyword's effect: `password = '...'` in options lists
            after_password, i = after_password and c == "=", i + 1
    return spans, takes_param


def _password_literals(sql: str) -> list[Span]:
    if "password" not in sql.lower():
        return []
    return merge(_scan(sql, False)[0] + _scan(sql, True)[0])


def password_parameters(sql: str) -> bool:
    """Whether the statement passes a `$n` parameter as a password (its Bind values are secret)."""
    if "password" not in sql.lower():
        return False
    return _scan(sql, False)[1] or _scan(sql, True)[1]


def _mask_spans(text: str, spans: list[Span], mask: str) -> str:
    parts, last = [], 0
    for start, end in spans:
        parts.append(text[last:start])
        parts.append(mask)
        last = end
    parts.append(text[last:])
    return "".join(parts)


# Compiled with the hot path (proxy/native.py); tests subclass it to count its calls.
@mypyc_attr(allow_interpreted_subclasses=True)
class Redactor:
    """Replaces secrets with `***` in text, and in every string of a record.

    `known_secrets` returns pgwarden's own live temporary passwords; it is called once per
    redaction, so it should be cheap: return a kept tuple or frozenset, and a new one when the
    secrets change (each such snapshot is indexed once, and results for short strings are
    remembered per snapshot; a mutable collection is read afresh every time).
    """

    def __init__(self, known_secrets: Callable[[], Iterable[str]] = tuple) -> None:
        self._known_secrets = known_secrets
        # Short strings repeat in every record (session ids, command tags): their results are
        # kept, per value of `known_secrets()` (a new set of secrets starts a new memo; a thread
        # still redacting under the old set writes only to the old memo).
        self._memo: tuple[object, dict[str, str]] = ((), {})
        # The snapshot last indexed, and its index (replaced whole: safe across threads).
        self._indexed: tuple[object, KnownSecrets] = ((), KnownSecrets(()))

    def snapshot(self) -> object | None:
        """The known secrets now, when they are a snapshot (a tuple or frozenset, replaced when
        they change): what was redacted under one may be kept until the next (`shaping.py`).
        None: they are read afresh each time, so nothing redacted may be kept."""
        secrets = self._known_secrets()
        return secrets if isinstance(secrets, _SNAPSHOTS) else None

    def redact(self, text: str) -> str:
        if len(text) < MIN_SECRET_TEXT:
            return text
        secrets = self._known_secrets()
        memo_secrets, memo = self._memo
        short = len(text) <= MEMO_MAX_TEXT
        if memo_secrets is not secrets:
            if not isinstance(secrets, _SNAPSHOTS):
                return self._redact(text, KnownSecrets(secrets, kept=False))
            memo = {}
            self._memo = (secrets, memo)
        elif short and (known := memo.get(text)) is not None:
            return known
        redacted = self._redact(text, self._index(secrets))
        if short:
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[text] = redacted
        return redacted

    def _index(self, snapshot: Iterable[str]) -> KnownSecrets:
        """The index of a snapshot of the known secrets, built once per snapshot."""
        indexed, index = self._indexed
        if indexed is not snapshot:
            index = KnownSecrets(snapshot)
            self._indexed = (snapshot, index)
        return index

    def _known_now(self) -> KnownSecrets:
        secrets = self._known_secrets()
        if isinstance(secrets, _SNAPSHOTS):
            return self._index(secrets)
        return KnownSecrets(secrets, kept=False)

    def _redact(self, text: str, known: KnownSecrets) -> str:
        if _MAYBE_SECRET.search(text) is not None:
            text = self._redact_patterns(text)
        if spans := known.spans(text):
            text = _mask_spans(text, spans, MASK)
        return text

    def _redact_patterns(self, text: str) -> str:
        if spans := _password_literals(text):
            text = _mask_spans(text, spans, f"'{MASK}'")
        text = _SCRAM.sub(MASK, text)
        text = _MD5.sub(MASK, text)
        if "password" in text.lower():
            text = _CONNINFO.sub(rf"\g<key>{MASK}", text)  # templates: substituted in C
            text = _JSON_PASSWORD.sub(rf'\g<key>"{MASK}"', text)
        if "://" in text:
            text = _URI.sub(rf"\g<user>:{MASK}@", text)
        return text

    def contains_known_secret(self, data: bytes) -> bool:
        """Whether raw bytes (a binary parameter) hold one of the known secrets."""
        return self._known_now().contains(data)

    def redact_record(self, record: Fields) -> Fields:
        return {key: self._value(value) for key, value in record.items()}

    def _value(self, value: JSONValue) -> JSONValue:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list):
            return [self._value(item) for item in value]
        if isinstance(value, dict):
            return self.redact_record(value)
        return value
