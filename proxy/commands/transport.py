"""The CLI's HTTP client, and how failures become exit statuses.

`ApiClient` sends JSON with the bearer token (stdlib `urllib`, no extra dependency) and returns
the decoded JSON object, or raises `Refused` (the server answered with an error: exit 1) or
`Unreachable` (no answer: exit 3). `cli_command()` wraps a command function so that every
command reports these the same way: a message that says what to do next on stderr, or the
server's JSON error on stdout with `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from proxy import __version__
from proxy.commands.client_config import ClientConfig, ClientConfigError, load_client_config

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_CODES = """\
exit status:
  0  done
  1  refused or failed by the server (not permitted, not found, wrong state, ...)
  2  usage or configuration error (bad arguments, no PGWARDEN_URL or PGWARDEN_TOKEN)
  3  cannot reach the server

configuration: PGWARDEN_URL and PGWARDEN_TOKEN, or url: and token: in
~/.config/pgwarden/cli.yaml"""
TIMEOUT = 30.0  # seconds per HTTP call (issuing a credential derives a key: allow for it)
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

JsonObject = dict[str, Any]


class Refused(Exception):
    """The server answered with an error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Unreachable(Exception):
    """No answer from the server (connection refused, DNS, timeout, TLS)."""


class ApiClient:
    def __init__(self, config: ClientConfig, timeout: float = TIMEOUT) -> None:
        self._config = config
        self._timeout = timeout

    @property
    def url(self) -> str:
        return self._config.url

    def get(self, path: str, query: Mapping[str, str] | None = None) -> JsonObject:
        suffix = f"?{urlencode(query)}" if query else ""
        return self.call("GET", path + suffix)

    def post(self, path: str, body: JsonObject | None = None) -> JsonObject:
        return self.call("POST", path, body)

    def delete(self, path: str, body: JsonObject | None = None) -> JsonObject:
        return self.call("DELETE", path, body)

    def call(self, method: str, path: str, body: JsonObject | None = None) -> JsonObject:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {
            "Authorization": f"Bearer {self._config.token}",
            "Accept": "application/json",
            "User-Agent": f"pgwarden-cli/{__version__}",
        }
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in config.py
            self._config.url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                raw = response.read(MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:
            raise _refusal(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach pgwarden at {self._config.url}: {reason}") from None
        return _decode(raw, 200)


def segment(text: str) -> str:
    """`text` as one URL path segment (an id typed by a person may contain anything)."""
    return quote(text, safe="")


def _refusal(exc: urllib.error.HTTPError) -> Refused:
    try:
        document = _decode(exc.read(MAX_RESPONSE_BYTES), exc.code)
        error = document["error"]
        return Refused(exc.code, str(error["code"]), str(error["message"]))
    except (Refused, KeyError, TypeError, OSError):
        return Refused(exc.code, f"http_{exc.code}", f"the server answered HTTP {exc.code}")


def _decode(raw: bytes, status: int) -> JsonObject:
    try:
        document = json.loads(raw)
    except ValueError:
        raise Refused(status, "bad_response", "the server's answer is not JSON") from None
    if not isinstance(document, dict):
        raise Refused(status, "bad_response", "the server's answer is not a JSON object")
    return document


CommandFunction = Callable[[argparse.Namespace, ApiClient], int]


def cli_command(function: CommandFunction) -> Callable[[argparse.Namespace], int]:
    """`function` with the client built from the configuration and failures reported."""

    def run(args: argparse.Namespace) -> int:
        as_json: bool = getattr(args, "json", False)
        try:
            return function(args, ApiClient(load_client_config()))
        except ClientConfigError as exc:
            return _report(as_json, EXIT_USAGE, "config_error", str(exc))
        except Refused as exc:
            return _report(as_json, EXIT_REFUSED, exc.code, exc.message + _hint(exc))
        except Unreachable as exc:
            hint = "; is `pgwarden serve` running there, and is PGWARDEN_URL right?"
            return _report(as_json, EXIT_UNREACHABLE, "unreachable", str(exc) + hint)

    return run


def _report(as_json: bool, status: int, code: str, message: str) -> int:
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    else:
        print(f"pgwarden: {message}", file=sys.stderr)
    return status


def _hint(exc: Refused) -> str:
    if exc.code == "not_found" and "request" in exc.message:
        return " (list the requests you can see with: pgwarden requests)"
    if exc.code == "not_found" and "session" in exc.message:
        return " (list the sessions you can see with: pgwarden sessions)"
    if exc.status == 401:
        return " (check PGWARDEN_TOKEN)"
    return ""


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the server's JSON (scripts)")
    parser.epilog = EXIT_CODES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
