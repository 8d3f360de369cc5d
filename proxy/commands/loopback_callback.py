"""The one-shot HTTP listener that receives the browser's redirect in `pgwarden login --browser`.

RFC 8252 (OAuth for native apps): the CLI listens on 127.0.0.1 on a port the system picks, and
the identity provider sends the browser back to `http://127.0.0.1:PORT/callback?code=...&state=..`.
The listener keeps the first callback's parameters, answers the browser with a short page that
echoes nothing it was sent (so nothing in a query can be rendered), and is shut down by its
owner. The stdlib server runs in a thread; the page is served to one browser, so one request at
a time is enough, and a slow local client cannot hold it past `REQUEST_TIMEOUT`.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from urllib.parse import parse_qsl, urlsplit

CALLBACK_PATH = "/callback"
REQUEST_TIMEOUT = 10.0  # seconds a connection may take to send its request
POLL_INTERVAL = 0.2  # how often the serving thread looks for shutdown()
JOIN_TIMEOUT = 5.0
MAX_PARAMETERS = 20  # code, state, iss, error, error_description, session_state, ...

RECEIVED_PAGE = (
    "<!doctype html><meta charset=utf-8><title>pgwarden</title>"
    "<p>pgwarden received your sign-in. You can close this tab and go back to the terminal.</p>"
)
ERROR_PAGE = (
    "<!doctype html><meta charset=utf-8><title>pgwarden</title>"
    "<p>The sign-in did not complete. The terminal says why.</p>"
)
DONE_PAGE = (
    "<!doctype html><meta charset=utf-8><title>pgwarden</title>"
    "<p>This sign-in is already done. You can close this tab.</p>"
)


class _Server(HTTPServer):
    received: dict[str, str] | None
    arrived: threading.Event


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH:
            self._answer(404, "<!doctype html><title>pgwarden</title><p>Not found.</p>")
            return
        if self.server.received is not None:
            self._answer(409, DONE_PAGE)
            return
        params = dict(parse_qsl(parts.query, max_num_fields=MAX_PARAMETERS))
        self.server.received = params
        self.server.arrived.set()
        self._answer(200, ERROR_PAGE if "error" in params else RECEIVED_PAGE)

    def _answer(self, status: int, page: str) -> None:
        body = page.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'none'")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: the request line carries the authorization code."""


class CallbackListener:
    """`with CallbackListener() as listener:` listens on 127.0.0.1 until the block ends, on a port
    the system picks, or on `port` for a provider that compares the registered port exactly.
    OSError if it cannot listen there."""

    def __init__(self, port: int = 0) -> None:
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.received = None
        self._server.arrived = threading.Event()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL},
            name="pgwarden-login-callback",
            daemon=True,
        )

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{CALLBACK_PATH}"

    def wait(self, timeout: float) -> dict[str, str] | None:
        """The callback's query parameters, or None if none came within `timeout` seconds."""
        if not self._server.arrived.wait(timeout):
            return None
        return self._server.received

    def __enter__(self) -> CallbackListener:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(JOIN_TIMEOUT)
