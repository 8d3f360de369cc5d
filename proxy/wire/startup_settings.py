"""The run-time settings a StartupMessage asks for, read as PostgreSQL reads them.

A client sets run-time parameters at startup in two ways: as ordinary startup parameters
(`statement_timeout=3s`), and inside `options`, the command-line switches of the backend
(`options=-c statement_timeout=3s --search_path=app`; libpq's PGOPTIONS). PostgreSQL splits
`options` on unescaped whitespace (a backslash makes the next character literal), accepts
`-c name=value`, `-cname=value` and `--name=value` (a dash in the name is an underscore), and
applies them first, then the ordinary parameters: when both set one name, the ordinary one wins.

`startup_settings` returns the merged result, names lowercased (PostgreSQL matches them without
regard to case), in first-seen order. `user`, `database`, `options` itself and protocol
extensions (`_pq_.*`) are not settings and are left out; everything else is returned, for the
session to judge. The other backend switches (`-B`, `-F`, `-d 5`, ...) are refused: they are not
run-time settings a client may ask for, and a proxy must not guess what they mean.
"""

from __future__ import annotations

from typing import Final

from proxy.wire import sqlstate
from proxy.wire.errors import RemoteProtocolError
from proxy.wire.startup import StartupMessage

# Startup parameters that say who logs in where, or how the protocol is spoken: not settings.
NOT_SETTINGS: Final = frozenset({"user", "database", "options"})
PROTOCOL_EXTENSION_PREFIX: Final = "_pq_."
MAX_SHOWN: Final = 40  # characters of a refused word quoted in the error

Settings = tuple[tuple[str, str], ...]

# What C's isspace() calls space in the C locale: Unicode spaces do not separate words.
_C_SPACE: Final = frozenset(" \t\n\v\f\r")


class InvalidStartupOptions(RemoteProtocolError):
    """`options` holds something other than `-c name=value` / `--name=value` (42601)."""

    sqlstate = sqlstate.SYNTAX_ERROR


def split_options(text: str) -> list[str]:
    """`options` split as PostgreSQL's pg_split_opts does: whitespace separates, a backslash
    escapes the next character (a trailing lone backslash is dropped)."""
    words: list[str] = []
    word: list[str] = []
    escaped = in_word = False
    for char in text:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = in_word = True
        elif char in _C_SPACE:
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
            continue
        else:
            word.append(char)
        in_word = True
    if in_word:
        words.append("".join(word))
    return words


def settings_from_options(text: str) -> list[tuple[str, str]]:
    """The (name, value) pairs `options` sets, in order; InvalidStartupOptions for anything else."""
    pairs: list[tuple[str, str]] = []
    words = iter(split_options(text))
    for word in words:
        if word == "-c":
            assignment = next(words, None)
            if assignment is None:
                raise InvalidStartupOptions('"-c" in options needs a name=value after it')
        elif word.startswith("--") or word.startswith("-c"):
            assignment = word[2:]
        else:
            raise InvalidStartupOptions(
                f'unsupported switch "{_shown(word)}" in options; use -c name=value or --name=value'
            )
        pairs.append(_assignment(assignment))
    return pairs


def _assignment(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise InvalidStartupOptions(f'"{_shown(text)}" in options is not name=value')
    return name.replace("-", "_"), value


def _shown(word: str) -> str:
    # An error names what was wrong, but never echoes kilobytes of a hostile packet back.
    return word if len(word) <= MAX_SHOWN else word[:MAX_SHOWN] + "..."


def startup_settings(startup: StartupMessage) -> Settings:
    """Every run-time setting `startup` asks for: `options` first, then the ordinary parameters,
    the last value of a name winning; names lowercased."""
    merged: dict[str, str] = {}
    for name, value in settings_from_options(startup.params.get("options", "")):
        merged[_lower(name)] = value
    for name, value in startup.parameters:
        lowered = _lower(name)
        if lowered in NOT_SETTINGS or lowered.startswith(PROTOCOL_EXTENSION_PREFIX):
            continue
        merged[lowered] = value
    return tuple(merged.items())


def _lower(name: str) -> str:
    # PostgreSQL folds ASCII letters only (guc_name_compare): `İ` stays as it is.
    return "".join(char.lower() if char.isascii() else char for char in name)
