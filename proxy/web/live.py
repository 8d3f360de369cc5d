"""Pages that update themselves: `GET /console/changes` answers `{"version": V}`.

A page carries the V it was rendered at (`data-version`, page.py `version`), and
`static/console.js` asks every `POLL_SECONDS` and refreshes the page's content when V moved: a
new request appears in an approver's inbox without a reload. V moves with every request,
approval and grant change on any replica (the state store's change counter) and whenever a live
session the person may see begins or ends. Without JavaScript nothing polls; the pages still
work, and a reload shows what is new.
"""

from __future__ import annotations

from aiohttp import web

from proxy.web.page import View, page, version


def routes() -> list[web.RouteDef]:
    return [web.get("/console/changes", page(changes), name="console:changes")]


async def changes(view: View) -> web.StreamResponse:
    return web.json_response({"version": view.version or await version(view)})
