"""Reading loosely typed YAML data into typed values while collecting every problem on the way.

The policy and the server config are both validated with these helpers, so the rules (what a name
is, how a duration, a path or a secret reference is written) and the error format are the same in
both. A `Fields` wraps one mapping of the document at a dotted path; each getter reads one key,
checks it, records a `Problem` (with the path and the line) when it is wrong, and returns `None`
so that validation carries on and reports everything at once. `finish()` then reports every key
that no getter asked for: unknown keys are errors, with a suggestion when one looks like a typo.

Getters return `None` both for "absent, no default" and for "invalid"; callers build their typed
value only when nothing is `None`, and the document is rejected as a whole if any problem was
recorded, so a half-checked value never escapes.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import TypeVar

from proxy.policy.durations import MAX_DURATION, DurationError, parse_duration
from proxy.policy.models import SecretRef
from proxy.policy.yaml_strict import Problems, YamlMap

E = TypeVar("E", bound=Enum)
Check = Callable[[str], str | None]  # returns what is wrong with the text, or None

# Names of users, groups, targets and levels: conservative on purpose. ASCII only, so that
# characters are bytes and nothing can look like something else; 63 bytes, Postgres's
# identifier limit, because a target or user name may travel in a startup packet (rows 6, 21).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,63}")
MAX_NAME_BYTES = 63  # NAMEDATALEN - 1
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
MAX_TEXT_CHARS = 200  # descriptions are shown in one line of a summary
# A DNS name (underscores allowed: container and service names use them) or an IP address.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
HOST_PATTERN = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_ABSENT = object()


def join(path: str, key: str | int) -> str:
    """`path` extended by a key (`a.b`) or a list index (`a[0]`); odd keys are quoted."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    segment = key if _PLAIN_SEGMENT.fullmatch(key) else json.dumps(key)
    return f"{path}.{segment}" if path else segment


def kind(value: object) -> str:
    """A short description of a YAML value for messages (strings shown truncated and escaped)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return "a list" if isinstance(value, list) else "a mapping"


class Fields:
    """One mapping of the document, read key by key; see the module docstring."""

    __slots__ = ("_data", "_known", "_line", "_lines", "_problems", "path")

    def __init__(
        self, data: Mapping[str, object], path: str, problems: Problems, line: int | None
    ) -> None:
        self._data = data
        self._lines: Mapping[object, int] = {}  # set by `of` for a mapping read from YAML
        self._line = line
        self._problems = problems
        self._known: set[str] = set()
        self.path = path

    @classmethod
    def of(
        cls, value: object, path: str, problems: Problems, line: int | None = None
    ) -> Fields | None:
        """`value` as a `Fields`, or `None` (and a problem) when it is not a mapping."""
        subject = "" if path else "the document "
        if value is None:
            problems.add(path, "has no value (write {} if it is meant to be empty)", line)
            return None
        if not isinstance(value, Mapping):
            message = f"{subject}must be a mapping (key: value lines), got {kind(value)}"
            problems.add(path, message, line)
            return None
        for key in value:
            if not isinstance(key, str):
                problems.add(join(path, str(key)), "keys must be text (put it in quotes)", line)
        data = {k: v for k, v in value.items() if isinstance(k, str)}
        fields = cls(data, path, problems, line)
        if isinstance(value, YamlMap):
            # The line of the key that holds this mapping reads best ("orders:"); a list item
            # has no key, so it gets the line where the item starts.
            fields._lines, fields._line = value.key_lines, line or value.line
        return fields

    # -- reporting ------------------------------------------------------------------------------

    def line_of(self, key: str | None) -> int | None:
        return self._line if key is None else self._lines.get(key, self._line)

    def problem(self, key: str | None, message: str, index: int | None = None) -> None:
        """Record a problem with `key` (item `index` of its list), or with the mapping itself."""
        path = self.path if key is None else join(self.path, key)
        path = path if index is None else join(path, index)
        self._problems.add(path, message, self.line_of(key))

    def finish(self) -> None:
        """Report every key that no getter asked for."""
        for key in self._data:
            if key not in self._known:
                self.problem(key, "unknown key" + _suggestion(key, self._known))

    # -- getters --------------------------------------------------------------------------------

    def has(self, key: str) -> bool:
        self._known.add(key)
        return key in self._data

    def raw(self, key: str, *, required: bool = False) -> object:
        """The value as written, or `_ABSENT` (with a problem if required or null)."""
        self._known.add(key)
        if key not in self._data:
            if required:
                self.problem(key, "required")
            return _ABSENT
        value = self._data[key]
        if value is None:
            self.problem(key, "has no value (write one, or remove the key to use the default)")
            return _ABSENT
        return value

    def forbid(self, key: str, message: str) -> None:
        """A key that must not be there, with the message that says what to do instead."""
        if self.has(key):
            self.problem(key, message)

    def string(
        self, key: str, *, required: bool = False, default: str | None = None, check: Check
    ) -> str | None:
        value = self.raw(key, required=required)
        if value is _ABSENT:
            return default
        if not isinstance(value, str):
            self.problem(key, f"must be text, got {kind(value)}")
            return None
        if (error := check(value)) is not None:
            self.problem(key, error)
            return None
        return value

    def integer(self, key: str, *, default: int | None = None, low: int, high: int) -> int | None:
        value = self.raw(key, required=default is None)
        if value is _ABSENT:
            return default
        # bool is an int in Python; `port: true` is still not a port.
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(key, f"must be a whole number, got {kind(value)}")
            return None
        if not low <= value <= high:
            self.problem(key, f"must be from {low} to {high}, got {value}")
            return None
        return value

    def boolean(self, key: str, *, default: bool) -> bool | None:
        value = self.raw(key)
        if value is _ABSENT:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, got {kind(value)}")
            return None
        return value

    def duration(
        self,
        key: str,
        *,
        required: bool = False,
        default: timedelta | None = None,
        maximum: timedelta = MAX_DURATION,
    ) -> timedelta | None:
        value = self.raw(key, required=required)
        if value is _ABSENT:
            return default
        return self._to_duration(key, value, maximum)

    def _to_duration(
        self, key: str, value: object, maximum: timedelta, index: int | None = None
    ) -> timedelta | None:
        if not isinstance(value, str):
            hint = " (a bare number has no unit: write 90s, 30m, 2h or 1d)"
            self.problem(key, f"must be a duration, got {kind(value)}" + hint, index)
            return None
        try:
            return parse_duration(value, maximum=maximum)
        except DurationError as exc:
            self.problem(key, str(exc), index)
            return None

    def durations(self, key: str, *, default: tuple[timedelta, ...]) -> tuple[timedelta, ...]:
        """A list of durations; invalid entries are reported and left out."""
        items = self._list(key)
        if items is None:
            return default
        found = [self._to_duration(key, item, MAX_DURATION, i) for i, item in enumerate(items)]
        return tuple(d for d in found if d is not None)

    def choice(self, key: str, enum: type[E], *, default: E) -> E | None:
        value = self.raw(key)
        if value is _ABSENT:
            return default
        allowed = [member.value for member in enum]
        if value not in allowed:
            self.problem(key, f"must be one of {', '.join(allowed)}, got {kind(value)}")
            return None
        return enum(value)

    def names(self, key: str, *, required: bool = False) -> tuple[str, ...] | None:
        """A list of names (`check_name`); bad or repeated entries are reported and left out."""
        items = self._list(key, required=required)
        if items is None:
            return None if required else ()
        found: list[str] = []
        for index, item in enumerate(items):
            error = (
                check_name(item) if isinstance(item, str) else f"must be a name, got {kind(item)}"
            )
            if error is None and item in found:
                error = f"{item!r} is listed twice"
            if error is not None:
                self.problem(key, error, index)
            else:
                found.append(str(item))
        return tuple(found)

    def path_value(self, key: str, base_dir: Path | None, *, required: bool = False) -> Path | None:
        """A file path; a relative one is taken from `base_dir` (the document's directory)."""
        text = self.string(key, required=required, check=check_path)
        if text is None:
            return None
        path = Path(text)
        return path if base_dir is None or path.is_absolute() else base_dir / path

    def section(self, key: str, *, required: bool = False) -> Fields | None:
        value = self.raw(key, required=required)
        if value is _ABSENT:
            return None
        return Fields.of(value, join(self.path, key), self._problems, self.line_of(key))

    def section_or_empty(self, key: str) -> Fields:
        """An optional section; when absent (or invalid: reported), an empty one of defaults."""
        found = self.section(key)
        if found is not None:
            return found
        return Fields({}, join(self.path, key), self._problems, self.line_of(key))

    def named_sections(self, key: str, *, required: bool = False) -> dict[str, Fields] | None:
        """A mapping of names (`check_name`) to mappings, e.g. `users:` or `targets:`."""
        outer = self.section(key, required=required)
        if outer is None:
            return None
        found: dict[str, Fields] = {}
        for name, value in outer._data.items():
            outer._known.add(name)
            if (error := check_name(name)) is not None:
                outer.problem(name, error)
            elif (
                inner := Fields.of(
                    value, join(outer.path, name), self._problems, outer.line_of(name)
                )
            ) is not None:
                found[name] = inner
        return found

    def section_list(self, key: str) -> list[Fields]:
        """A list of mappings, e.g. `auto_approve:`; entries that are not mappings are reported."""
        items = self._list(key) or []
        path = join(self.path, key)
        sections = (Fields.of(item, join(path, i), self._problems) for i, item in enumerate(items))
        return [section for section in sections if section is not None]

    def _list(self, key: str, *, required: bool = False) -> list[object] | None:
        value = self.raw(key, required=required)
        if value is _ABSENT:
            return None
        if not isinstance(value, list):
            self.problem(key, f"must be a list, got {kind(value)}")
            return None
        return value


def secret_ref(fields: Fields, prefix: str, base_dir: Path | None) -> SecretRef | None:
    """`<prefix>_env: NAME` or `<prefix>_file: PATH`: exactly one; an inline `<prefix>:` never."""
    env_key, file_key = f"{prefix}_env", f"{prefix}_file"
    how = f"use {env_key}: VARIABLE or {file_key}: PATH"
    # The value is never echoed: it is the secret.
    fields.forbid(prefix, f"secrets are not allowed in the file; {how}")
    given = [key for key in (env_key, file_key) if fields.has(key)]
    env = fields.string(env_key, check=check_env_name)
    file = fields.path_value(file_key, base_dir)
    if not given and not fields.has(prefix):  # an inline secret was already reported
        fields.problem(None, f"needs a secret reference: {how}")
    elif len(given) == 2:
        fields.problem(None, f"give one of {env_key} or {file_key}, not both")
    elif env is not None or file is not None:
        return SecretRef(env=env, file=file)
    return None


def check_name(text: str) -> str | None:
    if NAME_PATTERN.fullmatch(text):
        return None
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return f"{text[:40]!r} is not a valid name (1-63 of A-Z a-z 0-9 _ . @ -)"


def check_pg_identifier(text: str) -> str | None:
    """A Postgres role or database name: sent as-is in a startup packet, never truncated."""
    if not text or len(text.encode("utf-8", errors="surrogatepass")) > MAX_NAME_BYTES:
        return f"must be 1 to {MAX_NAME_BYTES} bytes (Postgres would silently truncate it)"
    if text != text.strip() or _has_control(text):
        return f"{text[:40]!r} has surrounding spaces or control characters"
    return None


def check_host(text: str) -> str | None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if HOST_PATTERN.fullmatch(text) is None:
            return f"{text[:60]!r} is not a host name or an IP address"
    return None


def check_env_name(text: str) -> str | None:
    if ENV_NAME_PATTERN.fullmatch(text):
        return None
    # Not echoed: someone may have pasted the secret itself here.
    return "must be the name of an environment variable (A-Z a-z 0-9 _, not starting with a digit)"


def check_path(text: str) -> str | None:
    if not text or _has_control(text):
        return "must be a file path without control characters"
    return None


def check_text(text: str) -> str | None:
    if len(text) > MAX_TEXT_CHARS or _has_control(text.replace("\t", " ")):
        return (
            f"must be one line of at most {MAX_TEXT_CHARS} characters, without control characters"
        )
    return None


def _has_control(text: str) -> bool:
    # Cc: C0/C1 controls and DEL; Cf: bidi overrides and other invisible format characters;
    # Cs: lone surrogates (a quoted "\ud800"); Zl/Zp: line and paragraph separators.
    return any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for ch in text)


def _suggestion(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (expected one of: {', '.join(sorted(known))})" if known else ""
