"""Strict, safe YAML loading for the policy and config files, and the `Problem` that reports errors.

Admins write these files by hand, and a mistake in them changes who can reach a production
database, so the loader refuses everything that YAML would otherwise silently "fix":

- it is a `yaml.SafeLoader` subclass: no Python objects, ever;
- a duplicate mapping key is an error (PyYAML keeps the last one without a word);
- anchors and aliases are rejected outright, which is the simplest defence against alias bombs
  ("billion laughs") and keeps each value where it is written;
- explicit tags (`!!timestamp`, `!!binary`, `!!python/...`) are rejected;
- the implicit types are YAML 1.2's core schema, not 1.1's: `2026-01-01` stays a string (no
  silent dates, the schema decides), `yes`/`no`/`on`/`off` stay strings, `0755` is not octal and
  `1:30` is not sexagesimal 90;
- the document is capped at `MAX_DOCUMENT_BYTES` before parsing, and its nesting at
  `MAX_NESTING_DEPTH` (the composer recurses once per level).

Mappings come back as `YamlMap`, a dict that remembers the line of each key, so that the schema
validators (`fields.py`) can point at the line of a bad value. Errors carry line and column.

This module also holds what every document check shares: `Problem` (one thing wrong, where),
`Problems` (the list a validator fills), `DocumentError` (raised with all of them), and
`read_source`/`build_document`, the read-parse-validate-raise sequence of the policy and the
config files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent, CollectionStartEvent, Event, NodeEvent, ScalarEvent
from yaml.nodes import MappingNode, Node

from proxy.errors import PgwardenError

T = TypeVar("T")

# Our files are a few KiB; 1 MiB leaves room for a policy with thousands of users while bounding
# the memory and CPU a broken or hostile file can cost before the parser even starts.
MAX_DOCUMENT_BYTES = 1024 * 1024
# The deepest legitimate path is about 8 levels; the cap keeps the recursive composer far from
# Python's recursion limit whatever the file holds.
MAX_NESTING_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document: where (a dotted path and/or a line) and what."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.path:
            where = f" (line {self.line})" if self.line is not None else ""
            return f"{self.path}: {self.message}{where}"
        if self.line is not None:
            column = f", column {self.column}" if self.column is not None else ""
            return f"line {self.line}{column}: {self.message}"
        return self.message


class DocumentError(PgwardenError):
    """A document (policy or config) that cannot be used, with every problem found in it."""

    sqlstate = "F0000"  # config_file_error

    def __init__(self, source: str, problems: Iterable[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(f"{source}: " + "; ".join(str(p) for p in self.problems))


class Problems:
    """Where every check of a document writes what it found."""

    def __init__(self) -> None:
        self._items: list[Problem] = []

    def add(self, path: str, message: str, line: int | None = None) -> None:
        self._items.append(Problem(path, message, line))

    @property
    def items(self) -> tuple[Problem, ...]:
        """Everything found, in the order of the document's lines (stable within a line)."""
        return tuple(sorted(self._items, key=lambda problem: problem.line or 0))

    def __len__(self) -> int:
        return len(self._items)


class YamlError(DocumentError):
    """The text is not acceptable YAML (syntax, duplicate key, alias, tag, size, encoding)."""


class YamlMap(dict[object, object]):
    """A mapping read from YAML that remembers the line of itself and of each of its keys."""

    __slots__ = ("key_lines", "line")

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[object, int] = {}


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader without aliases, tags, duplicate keys or YAML 1.1's implicit surprises."""

    # Own resolver table (filled below): without it we would inherit SafeLoader's 1.1 table.
    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 (PyYAML's class-level table)

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event: Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
        # The pure-Python parser makes `yaml.error.Mark`s; the stubs also allow the C one.
        mark = event.start_mark if isinstance(event.start_mark, yaml.error.Mark) else None
        if isinstance(event, AliasEvent) or (isinstance(event, NodeEvent) and event.anchor):
            raise ComposerError(None, None, "YAML anchors and aliases are not allowed", mark)
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.tag is not None:
            raise ComposerError(None, None, f"YAML tags are not allowed ({event.tag!r:.60})", mark)
        if self._depth >= MAX_NESTING_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_NESTING_DEPTH} levels", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_map(loader: StrictLoader, node: MappingNode) -> Iterator[YamlMap]:
    """Build a `YamlMap`, refusing duplicate and unhashable keys (PyYAML's two-step protocol)."""
    data = YamlMap(node.start_mark.line + 1)
    yield data
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, Hashable):
            raise ConstructorError(
                None, None, "a mapping key must be a scalar", key_node.start_mark
            )
        if key in data.key_lines:
            first = data.key_lines[key]
            message = f"duplicate key {key!r:.60} (first defined on line {first})"
            raise ConstructorError(None, None, message, key_node.start_mark)
        data.key_lines[key] = key_node.start_mark.line + 1
        data[key] = loader.construct_object(value_node)


# YAML 1.2 core schema. Order matters: the first matching resolver wins, so int precedes float.
_RESOLVERS: tuple[tuple[str, str, str], ...] = (
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", "~nN"),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^[-+]?(?:0|[1-9][0-9]*)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        # A dot or an exponent is required, so that `0755` stays text instead of becoming 755.0.
        r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
)
for _tag, _pattern, _first in _RESOLVERS:
    # The empty string is how PyYAML keys the resolvers of an empty scalar (`key:` → null).
    _firsts = [*_first, ""] if _tag.endswith(":null") else list(_first)
    StrictLoader.add_implicit_resolver(_tag, re.compile(_pattern), _firsts)
StrictLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def load_yaml(text: str, source: str = "<string>") -> object:
    """Parse one YAML document strictly; `None` for an empty document. Raises `YamlError`."""
    _check_size(text, source)
    try:
        return _parse(text)
    except yaml.MarkedYAMLError as exc:
        raise YamlError(source, [_marked_problem(exc)]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        message = f"character U+{exc.character:04X} is not allowed in YAML"
        raise YamlError(source, [Problem("", message, line)]) from None
    except yaml.YAMLError as exc:  # no other kind is known; kept so nothing escapes untyped
        raise YamlError(source, [Problem("", str(exc))]) from None


def _parse(text: str) -> object:
    loader = StrictLoader(text)  # checks for unprintable characters at once (ReaderError)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_source(path: Path, invalid: type[DocumentError], unreadable: type[DocumentError]) -> str:
    """The file's text; a file that cannot be read raises `unreadable`, a bad one `invalid`."""
    try:
        return read_document(path)
    except OSError as exc:
        problem = Problem("", f"cannot read {path}: {exc.strerror or exc}")
        raise unreadable(str(path), [problem]) from None
    except YamlError as exc:
        raise invalid(str(path), exc.problems) from None


def build_document(
    text: str,
    source: str,
    invalid: type[DocumentError],
    build: Callable[[object, Problems], T | None],
) -> T:
    """Parse `text` and `build` a typed value from it; any problem at all raises `invalid`.

    `build` records what it finds in the `Problems` it is given and carries on, so that the
    error lists everything wrong with the document at once.
    """
    try:
        document = load_yaml(text, source)
    except YamlError as exc:
        raise invalid(source, exc.problems) from None
    problems = Problems()
    value = build(document, problems)
    if len(problems) or value is None:
        raise invalid(source, problems.items or [Problem("", "invalid document")])
    return value


def read_document(path: Path) -> str:
    """The file's text, read without ever holding more than the size cap.

    Raises `OSError` when the file cannot be read (callers report that apart, as "unreadable")
    and `YamlError` when it is too large or not UTF-8.
    """
    with path.open("rb") as stream:
        data = stream.read(MAX_DOCUMENT_BYTES + 1)
    _check_size(data, str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlError(str(path), [Problem("", "the file is not valid UTF-8", line)]) from None


def _check_size(document: str | bytes, source: str) -> None:
    size = len(document)
    if isinstance(document, str) and size <= MAX_DOCUMENT_BYTES:
        size = len(document.encode("utf-8", errors="surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        message = f"the document is larger than the limit of {MAX_DOCUMENT_BYTES} bytes"
        raise YamlError(source, [Problem("", message)])


def _marked_problem(exc: yaml.MarkedYAMLError) -> Problem:
    # Built from the parts, not str(exc): that would quote the offending source line, which may
    # hold something an admin did not mean to put in a log.
    message = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context:
        message = f"{exc.problem} ({exc.context})"
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return Problem("", message)
    return Problem("", message, mark.line + 1, mark.column + 1)
