"""The CLI's HTTP client, and how failures become exit statuses.

`ApiClient` sends JSON with the bearer token (stdlib `urllib`, no extra dependency) and returns
the decoded JSON object, or raises `Refused` (the server answered with an error: exit 1) or
`Unreachable` (no answer: exit 3). `cli_command()` wraps a command function so that every
command reports these the same way: a message that says what to do next on stderr, or the
server's JSON error on stdout with `--json`.

The bearer is the API token when one is configured, else the session of `pgwarden login`,
refreshed first through `/api/v1/auth/refresh` when it ends within a minute. A session the server
no longer takes (refresh refused, or a 401) ends with "sign in again" (exit 2). `public_command()`
wraps login and logout, which need the server's URL but no credential.
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
from proxy.clock import SYSTEM_CLOCK
from proxy.commands.client_config import ClientConfig, ClientConfigError, load_client_config
from proxy.commands.session_file import (
    SessionEnded,
    SessionFileError,
    fresh_session,
)

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_CODES = """\
exit status:
  0  done
  1  refused or failed by the server (not permitted, not found, wrong state, ...)
  2  usage or configuration error (bad arguments, no PGWARDEN_URL, no token and not
     signed in, the session ended)
  3  cannot reach the server

configuration: PGWARDEN_URL, and PGWARDEN_TOKEN or a sign-in (pgwarden login); or url:
and token: in ~/.config/pgwarden/cli.yaml"""
TIMEOUT = 30.0  # seconds per HTTP call (issuing a credential derives a key: allow for it)
MAX_RESPONSE_BYTES = 16 * 1024 * 1024

JsonObject = dict[str, Any]
AUTH_PATH = "/api/v1/auth"  # single sign-on: login, refresh, logout
# What a refused refresh answers: the provider said no (401), or the request was malformed or
# the flow is gone; 5xx and unreachable are not the session's end.
REFRESH_REFUSED = frozenset({400, 401, 403})


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

    @property
    def config(self) -> ClientConfig:
        return self._config

    def get(self, path: str, query: Mapping[str, str] | None = None) -> JsonObject:
        suffix = f"?{urlencode(query)}" if query else ""
        return self.call("GET", path + suffix)

    def post(self, path: str, body: JsonObject | None = None) -> JsonObject:
        return self.call("POST", path, body)

    def delete(self, path: str, body: JsonObject | None = None) -> JsonObject:
        return self.call("DELETE", path, body)

    def call(self, method: str, path: str, body: JsonObject | None = None) -> JsonObject:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json", "User-Agent": f"pgwarden-cli/{__version__}"}
        if self._config.token:
            headers["Authorization"] = f"Bearer {self._config.token}"
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
        return _decode(raw, 200) if raw.strip() else {}  # 204 No Content: nothing to decode


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


def open_client(config: ClientConfig) -> ApiClient:
    """A client with the configured API token, else with the (fresh) stored session."""
    if config.token or config.session_file is None:
        return ApiClient(config)
    anonymous = ApiClient(ClientConfig(config.url, ""))

    def refresh(refresh_token: str) -> JsonObject:
        try:
            return anonymous.post(f"{AUTH_PATH}/refresh", {"refresh_token": refresh_token})
        except Refused as exc:
            if exc.status in REFRESH_REFUSED:
                raise SessionEnded() from None
            raise

    session = fresh_session(config.session_file, config.url, refresh, SYSTEM_CLOCK.now)
    return ApiClient(ClientConfig(config.url, session.session_token, config.session_file))


CommandFunction = Callable[[argparse.Namespace, ApiClient], int]


def cli_command(function: CommandFunction) -> Callable[[argparse.Namespace], int]:
    """`function` with the client built from the configuration and failures reported."""

    def run(args: argparse.Namespace) -> int:
        def call() -> int:
            config = load_client_config()
            try:
                return function(args, open_client(config))
            except Refused as exc:
                if exc.status == 401 and not config.token:  # the server ended the session
                    raise SessionEnded() from None
                raise

        return _reported(args, call)

    return run


def public_command(function: CommandFunction) -> Callable[[argparse.Namespace], int]:
    """`function` with a client that carries no credential (login, logout), failures reported."""

    def run(args: argparse.Namespace) -> int:
        def call() -> int:
            return function(args, ApiClient(load_client_config(need_credential=False)))

        return _reported(args, call, hints=False)

    return run


def _reported(args: argparse.Namespace, call: Callable[[], int], hints: bool = True) -> int:
    as_json: bool = getattr(args, "json", False)
    try:
        return call()
    except (ClientConfigError, SessionFileError) as exc:
        return _report(as_json, EXIT_USAGE, "config_error", str(exc))
    except SessionEnded as exc:
        return _report(as_json, EXIT_USAGE, "session_ended", str(exc))
    except Refused as exc:
        hint = _hint(exc) if hints else ""
        return _report(as_json, EXIT_REFUSED, exc.code, exc.message + hint)
    except Unreachable as exc:
        hint = "; is `pgwarden serve` running there, and is PGWARDEN_URL right?"
        return _report(as_json, EXIT_UNREACHABLE, "unreachable", str(exc) + hint)


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
