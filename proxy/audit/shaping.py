"""Query text and values as a record holds them: redacted, cut to size, JSON-encoded — worked out
once per distinct statement text.

Every string a query record holds passes the redactor (`redact.py`), *then* is cut to its size
limit (so a cut never exposes half a secret), then is encoded as ASCII JSON (`records.py` says
why: a value can never end a line or forge one). Prepared and repeated statements are the common
case, so `Shaper` keeps what it made of each distinct Query or Parse message, keyed by the
message's raw bytes, so that a repeat costs one lookup and no decoding: an LRU bounded by
CACHE_BYTES per message type. A new set of pgwarden's live temporary passwords (the redactor's
known secrets) empties it, since a kept text could hold one of the new ones.

Lists of values (Bind parameters, FunctionCall arguments) are encoded by orjson, in C; the rare
list that orjson would write as non-ASCII (or cannot write: the lone surrogates that stand for
undecodable bytes) goes through the standard library's ASCII encoder instead.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Generic, TypeVar

import orjson

from proxy.audit.redact import MASK, MIN_SECRET_TEXT, Redactor, password_parameters
from proxy.wire import Parse, Query

DEFAULT_MAX_TEXT_BYTES = 1024 * 1024  # query text kept whole up to here (a very large query)
DEFAULT_MAX_PARAM_BYTES = 1024  # each Bind value / FunctionCall argument shown up to here
REDACT_MARGIN = 1024  # a value is redacted over this much beyond the cut, then cut
CACHE_BYTES = 4 * 1024 * 1024  # per message type: raw messages + their shaped text, LRU
MAX_CACHED_MESSAGE = 16 * 1024  # a longer message is shaped every time (rarely repeated)
ENTRY_OVERHEAD = 200  # Python's own bytes per cached entry (objects, the dict's slot), roughly
TAG_ENTRIES = 1024  # command tags remembered (`SELECT 1`, `INSERT 0 5`, ...): then start over

quote: Callable[[str], str] = encode_basestring_ascii  # the C encoder json.dumps itself uses
Shown = str | dict[str, str | int | bool] | None  # a parameter as a record holds it
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class QueryLimits:
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    max_param_bytes: int = DEFAULT_MAX_PARAM_BYTES  # all values of one message together are
    # also held to max_text_bytes; values beyond it are counted as omitted


@dataclass(frozen=True, slots=True)
class Statement:
    """A Parse message as a record holds it: the step's JSON, the statement's name, and whether
    it takes a password as a parameter (its Bind values are then all `***`)."""

    step: str
    name: str
    secret: bool


class Lru(Generic[V]):
    """Shaped messages by their raw bytes, least recently used first out once the entries (keys,
    the sizes given, ENTRY_OVERHEAD each) pass `max_bytes`."""

    __slots__ = ("entries", "held", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.entries: OrderedDict[bytes, tuple[V, int]] = OrderedDict()
        self.held = 0
        self.max_bytes = max_bytes

    def get(self, key: bytes) -> V | None:
        found = self.entries.get(key)
        if found is None:
            return None
        self.entries.move_to_end(key)
        return found[0]

    def put(self, key: bytes, value: V, size: int) -> None:
        if len(key) > MAX_CACHED_MESSAGE or key in self.entries:
            return
        size += len(key) + ENTRY_OVERHEAD
        self.entries[key] = (value, size)
        self.held += size
        while self.held > self.max_bytes:
            self.held -= self.entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        self.entries.clear()
        self.held = 0


class Shaper:
    """Redacts, cuts and encodes query text and values (see the module docstring). Not
    thread-safe: one per event loop (the server's `SessionAuditor`)."""

    def __init__(self, redactor: Redactor, limits: QueryLimits = QueryLimits()) -> None:
        self.redactor = redactor
        self.limits = limits
        self._secrets: object | None = None  # the known secrets the caches were filled under
        self._queries: Lru[str] = Lru(CACHE_BYTES)
        self._statements: Lru[Statement] = Lru(CACHE_BYTES)
        self._tags: dict[str, tuple[str, int | None]] = {}

    # -- statement text, once per distinct message --------------------------------------------

    def query(self, payload: bytes) -> str:
        """A Query message's step: `{"query":<text>}`. Raises RemoteProtocolError for a
        malformed payload."""
        cacheable = self._cacheable()
        if cacheable and (step := self._queries.get(payload)) is not None:
            return step
        end = payload.find(b"\0")
        if end >= 0 and end == len(payload) - 1:
            text = self.text(payload[:end])
        else:  # not NUL-terminated, or bytes after the NUL: decoding raises the protocol error
            text = self.text(Query.decode(payload).query.encode("utf-8", "surrogateescape"))
        step = '{"query":' + text + "}"
        if cacheable:
            self._queries.put(payload, step, len(step))
        return step

    def statement(self, payload: bytes) -> Statement:
        """A Parse message: its step, `{"parse":<name>,"text":<text>[,"param_types":[...]]}`,
        its name, whether it takes a password. Raises RemoteProtocolError if malformed."""
        cacheable = self._cacheable()
        if cacheable and (known := self._statements.get(payload)) is not None:
            return known
        parse = Parse.decode(payload)
        text = self.text(parse.query.encode("utf-8", "surrogateescape"))
        types = ",".join(map(str, parse.param_types))
        step = "".join((
            '{"parse":', self.name(parse.statement), ',"text":', text,
            f',"param_types":[{types}]' if types else "", "}",
        ))  # fmt: skip
        shaped = Statement(step, parse.statement, password_parameters(parse.query))
        if cacheable:
            self._statements.put(payload, shaped, len(step))
        return shaped

    def text(self, raw: bytes) -> str:
        """Statement text as a record holds it: `"<text>"`, followed by `,"bytes":N,
        "truncated":true` when it was cut (N: its size in bytes)."""
        limit = self.limits.max_text_bytes
        if len(raw) <= limit:  # the common case: it fits, unless redaction made it longer
            text = _decode(raw)
            redacted = self.redactor.redact(text)
            if redacted == text:
                return quote(text)
            encoded = redacted.encode("utf-8", "surrogateescape")
            if len(encoded) <= limit:
                return quote(redacted)
            size = len(encoded)
        else:
            whole = len(raw) <= limit + REDACT_MARGIN
            redacted = self.redactor.redact(_decode(raw if whole else raw[: limit + REDACT_MARGIN]))
            encoded = redacted.encode("utf-8", "surrogateescape")
            if whole and len(encoded) <= limit:
                return quote(redacted)
            size = len(encoded) if whole else len(raw)
        return f'{quote(_decode(encoded[:limit]))},"bytes":{size},"truncated":true'

    def _cacheable(self) -> bool:
        """Whether shaped messages may be kept and reused: the redactor's known secrets are a
        snapshot, the one the caches were filled under (a new one empties them)."""
        secrets = self.redactor.snapshot()
        if secrets is not self._secrets:
            self._queries.clear()
            self._statements.clear()
            self._tags.clear()
            self._secrets = secrets
        return secrets is not None

    # -- names, tags, values -----------------------------------------------------------------

    def string(self, text: str) -> str:
        """Any other string (error messages, ...): redacted and quoted."""
        return quote(self.redactor.redact(text))

    def name(self, name: str) -> str:
        """A statement or portal name, as `string`: most are unnamed (`""`) or too short to
        hold a secret, and one of them is in every step."""
        if len(name) < MIN_SECRET_TEXT:
            return quote(name)
        return quote(self.redactor.redact(name))

    def tag(self, tag: str) -> tuple[str, int | None]:
        """A command tag, quoted, and the row count it carries (`INSERT 0 5` → 5), if any."""
        cacheable = self._cacheable()
        if cacheable and (known := self._tags.get(tag)) is not None:
            return known
        if len(self._tags) >= TAG_ENTRIES:
            self._tags.clear()
        shaped = (self.string(tag), rows_of(tag))
        if cacheable:
            self._tags[tag] = shaped
        return shaped

    def values(
        self, formats: Sequence[int], values: Sequence[bytes | None], secret: bool
    ) -> tuple[str, int]:
        """Bind parameters or FunctionCall arguments as a JSON list, and how many were left out
        once the message's budget (max_text_bytes of shown values) was spent."""
        budget, limit = self.limits.max_text_bytes, self.limits.max_param_bytes
        redact = self.redactor.redact
        shown: list[Shown] = []
        # One format code applies to every value, none means text (a mismatched count is the
        # database's to refuse: here, a value with no code of its own counts as text).
        single = formats[0] if len(formats) == 1 else 0 if not formats else None
        for index, value in enumerate(values):
            if budget <= 0:
                return json_list(shown), len(values) - index
            code = single if single is not None else formats[index] if index < len(formats) else 0
            if code != 1 and value is not None and not secret and len(value) <= limit:
                text = value.decode("utf-8", "surrogateescape")  # the common case, inline:
                if redact(text) == text:  # a text value shown whole
                    shown.append(text)
                    budget -= len(text)
                    continue
            item, size = self._value(value, code == 1, secret)
            budget -= size
            shown.append(item)
        return json_list(shown), 0

    def _value(self, value: bytes | None, binary: bool, secret: bool) -> tuple[Shown, int]:
        """A value as shown, and its size: its text, `{"base64": ...}` for a binary one, None for
        NULL; a value cut at max_param_bytes has `bytes` (its size) and `truncated` too."""
        if value is None:
            return None, 0
        if secret or (binary and self.redactor.contains_known_secret(value)):
            return MASK, len(MASK)
        limit = self.limits.max_param_bytes
        if binary:
            shown = base64.b64encode(value[:limit]).decode("ascii")
            if len(value) <= limit:
                return {"base64": shown}, len(shown)
            return {"base64": shown, "bytes": len(value), "truncated": True}, len(shown)
        text = _decode(value[: limit + REDACT_MARGIN])
        shown = self.redactor.redact(text)
        encoded = value if shown == text else shown.encode("utf-8", "surrogateescape")
        if len(value) <= limit and len(encoded) <= limit:
            return shown, len(shown)
        shown = _decode(encoded[:limit])
        return {"text": shown, "bytes": len(value), "truncated": True}, len(shown)


def json_list(items: Sequence[Shown]) -> str:
    """`[...]` as ASCII JSON: orjson's output when it is ASCII (no DEL either: the format
    escapes it), else the standard library's. A lone text value (the common case) is quoted
    directly: cheaper than a call into orjson, which pays from two values on."""
    if len(items) == 1 and type(first := items[0]) is str:
        return "[" + quote(first) + "]"
    try:
        encoded = orjson.dumps(items)
    except TypeError:  # a lone surrogate (an undecodable byte): orjson writes only UTF-8
        return _ascii_json(items)
    if encoded.isascii() and b"\x7f" not in encoded:
        return encoded.decode("ascii")
    return _ascii_json(items)


def _ascii_json(items: Sequence[Shown]) -> str:
    return json.dumps(items, ensure_ascii=True, separators=(",", ":"))


def rows_of(tag: str) -> int | None:
    """The row count in a command tag (`INSERT 0 5` → 5, `SELECT 3` → 3), if it has one."""
    head, _, count = tag.rpartition(" ")
    return int(count) if head and count.isascii() and count.isdigit() else None


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
