"""The console's routes on the API's application (`install`), and where its files are.

Every route is named `console:...`: the API's bearer check leaves those to the console's own
(page.py), and nothing else. `/` sends a browser to the console.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

from proxy.web import live, request_pages, requester_pages, session_pages, signin_pages
from proxy.web.deps import DEPS, ConsoleDeps
from proxy.web.guard import security_headers
from proxy.web.page import redirect

STATIC: Final = Path(__file__).resolve().parent / "static"
ROUTE_PREFIX: Final = "console:"


def install(app: web.Application, deps: ConsoleDeps) -> None:
    app[DEPS] = deps
    app.add_routes(
        [
            web.get("/", to_console, name="console:root"),
            *signin_pages.routes(),
            *request_pages.routes(),
            *requester_pages.routes(),
            *session_pages.routes(),
            *live.routes(),
            web.static("/console/static", STATIC, name="console:static"),
        ]
    )
    app.on_response_prepare.append(console_headers)


async def console_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The security headers on every answer under /console, also those no page builds: its
    static files, and the API's answer to a path no route matches."""
    if request.path.startswith("/console"):
        security_headers(response)


async def to_console(request: web.Request) -> web.Response:
    return redirect("/console/")
