"""Reading request bodies and query strings: strict, bounded, and with messages that help.

A body is at most `MAX_BODY_BYTES` (413: refused at once when `Content-Length` says more, else by
aiohttp as soon as more has arrived) and must arrive within `BODY_TIMEOUT` (408).
When present it must be `Content-Type: application/json` (else 415) holding one JSON object in
UTF-8: a syntax error, a nesting bomb, a duplicated key or a top-level array is a 400 `bad_json`.
Each endpoint declares its fields in a `BodySpec`; an unknown field, a missing one or a value of
the wrong type is a 400 `invalid_body` naming the field. Every field here is text: names (targets,
levels) follow the policy's name rules, free text (reasons, comments) is one line of at most
`MAX_TEXT_LENGTH` characters without control characters — it ends up in approvers' terminals and
chat, where an escape sequence must not be able to hide or rewrite anything.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy.api.errors import ApiError, invalid_body
from proxy.grants.rules import MAX_TEXT_LENGTH
from proxy.policy.fields import check_name

# Bodies here are a few short strings; 64 KiB leaves room for long reasons and nothing more.
MAX_BODY_BYTES = 64 * 1024
# A body that has not fully arrived after this long is refused (408): a client that announces a
# body and then trickles it (or nothing) must not hold a handler forever.
BODY_TIMEOUT = 10.0
JSON_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class BodySpec:
    """The fields of one endpoint's body: which are required, which are names or free text."""

    required: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()  # the rest is free text

    @classmethod
    def of(cls, *, required: str = "", optional: str = "", names: str = "") -> BodySpec:
        return cls(
            frozenset(required.split()), frozenset(optional.split()), frozenset(names.split())
        )

    @property
    def allowed(self) -> frozenset[str]:
        return self.required | self.optional


EMPTY = BodySpec()


async def read_body(request: web.Request, spec: BodySpec) -> dict[str, str]:
    """The validated fields of the request's body (absent optional fields are left out)."""
    if not request.body_exists:
        return validate({}, spec)
    if request.content_type != JSON_TYPE:
        raise ApiError(
            415, "unsupported_media_type",
            f"send the body as {JSON_TYPE} (got {request.content_type[:60] or 'no type'})",
        )  # fmt: skip
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:  # refuse before reading a byte
        raise ApiError(413, "body_too_large", f"the body is limited to {MAX_BODY_BYTES} bytes")
    try:  # aiohttp itself raises 413 past client_max_size, whatever the headers said
        raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT)
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the body did not arrive within {BODY_TIMEOUT:g} s"
        ) from None
    if not raw:
        return validate({}, spec)
    return validate(parse_json_object(raw), spec)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", "the body is not valid UTF-8") from exc
    except RecursionError as exc:
        raise ApiError(400, "bad_json", "the body is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, a duplicated key, an integer too long
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object ({...})")
    return document


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"the key {key[:40]!r} appears twice")
        document[key] = value
    return document


def validate(document: Mapping[str, Any], spec: BodySpec) -> dict[str, str]:
    problems: list[str] = []
    unknown = sorted(set(document) - spec.allowed)
    if unknown:
        known = ", ".join(sorted(spec.allowed)) or "none"
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        problems.append(f"unknown field(s) {shown} (this endpoint takes: {known})")
    for name in sorted(spec.required - set(document)):
        problems.append(f"{name}: required")
    fields: dict[str, str] = {}
    for name in sorted(spec.allowed & set(document)):
        error = _check(name, document[name], spec)
        if error is not None:
            problems.append(f"{name}: {error}")
        else:
            fields[name] = document[name]
    if problems:
        raise invalid_body("; ".join(problems))
    return fields


def _check(name: str, value: object, spec: BodySpec) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {_json_kind(value)}"
    if name in spec.names:
        return check_name(value)
    return check_free_text(value)


def check_free_text(text: str) -> str | None:
    if len(text) > MAX_TEXT_LENGTH:
        return f"is longer than {MAX_TEXT_LENGTH} characters"
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for ch in text):
        return "must be one line without control characters"
    return None


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return "a list" if isinstance(value, list) else "an object"


def read_query(request: web.Request, allowed: frozenset[str]) -> dict[str, str]:
    """The query parameters, each at most once and each known; 400 `invalid_query` otherwise."""
    found: dict[str, str] = {}
    for key, value in request.query.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ApiError(400, "invalid_query", f"unknown parameter {key[:40]!r} (known: {known})")
        if key in found:
            raise ApiError(400, "invalid_query", f"parameter {key!r} is given twice")
        found[key] = value
    return found
