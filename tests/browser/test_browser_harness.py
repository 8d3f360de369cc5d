"""The browser harness itself (tests/fixtures/browser.py), against a tiny aiohttp site on loopback.

The site runs in a thread of this process: a form whose POSTs it records, a page whose external
script (`/app.js`, allowed by `script-src 'self'`) changes it a moment after loading, and pages
with and without an inline script under that CSP. Tests that only read and fill pages share one
browser (`shared`), since each Chromium takes a second or more to start; those about a browser's
own state (its console log, its size, its cookies) get their own from the fixtures.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tests.fixtures import browser as browser_module
from tests.fixtures.browser import PHONE, Browser, BrowserFactory, artifacts_dir

CSP = {"Content-Security-Policy": "default-src 'self'; script-src 'self'"}
SLOW_REPLY = 0.3  # the POST's answer comes late, so `press` is seen to wait for the next page
SCRIPT_DELAY_MS = 300  # /app.js changes the page this long after it loads

FORM = """<!doctype html><html><head><title>Request</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head><body>
<form method="post" action="/form">
  <label>Database <input name="database"></label>
  <label>Reason <textarea name="reason"></textarea></label>
  <label>Role <select name="role"><option value="ro">Read only</option>
    <option value="rw">Read and write</option></select></label>
  <input type="hidden" name="csrf" value="t0ken">
  <button type="submit">Request access</button>
  <input type="submit" name="cancel" value="Cancel">
</form><a href="/late">Later page</a></body></html>"""

LATE = """<!doctype html><html><head><title>Late</title><script src="/app.js"></script></head>
<body><p id="status">Waiting for approval</p></body></html>"""

APP_JS = f"""document.addEventListener("DOMContentLoaded", () => {{
  setTimeout(() => {{
    document.getElementById("status").textContent = "Approved by carol";
  }}, {SCRIPT_DELAY_MS});
}});"""

INLINE = """<!doctype html><html><head><title>Inline</title></head><body><p>Inline page</p>
<script>document.body.append("ran inline");</script></body></html>"""

TWICE = """<!doctype html><html><head><title>Twice</title></head><body>
<form id="first" method="post" action="/approve"><input type="hidden" name="n" value="1">
<button>Approve</button></form>
<form id="second" method="post" action="/approve"><input type="hidden" name="n" value="2">
<button>Approve</button></form></body></html>"""

CLEAN = """<!doctype html><html><head><title>Clean</title><script src="/app.js"></script></head>
<body><p id="status">Clean page</p></body></html>"""


@dataclass
class Site:
    """The test site's address and the forms posted to it."""

    url: str
    posts: list[dict[str, str]] = field(default_factory=list)


def _app(site: Site) -> web.Application:
    def page(body: str) -> web.Response:
        return web.Response(text=body, content_type="text/html", headers=CSP)

    async def form(request: web.Request) -> web.Response:
        response = page(FORM)
        response.set_cookie("session", "s1", httponly=True, samesite="Strict")
        return response

    async def posted(request: web.Request) -> web.Response:
        data = await request.post()
        site.posts.append({k: str(v) for k, v in data.items()})
        await asyncio.sleep(SLOW_REPLY)
        return page(f"<!doctype html><p>Requested {data.get('database')!s}</p>")

    async def fixed(request: web.Request) -> web.Response:
        return page(
            {"/late": LATE, "/inline": INLINE, "/clean": CLEAN, "/twice": TWICE}[request.path]
        )

    async def approve(request: web.Request) -> web.Response:
        data = await request.post()
        return page(f"<!doctype html><p>Approved {data.get('n')!s}</p>")

    async def app_js(request: web.Request) -> web.Response:
        return web.Response(text=APP_JS, content_type="text/javascript", headers=CSP)

    app = web.Application()
    app.router.add_get("/form", form)
    app.router.add_post("/form", posted)
    app.router.add_get("/app.js", app_js)
    app.router.add_post("/approve", approve)
    for path in ("/late", "/inline", "/clean", "/twice"):
        app.router.add_get(path, fixed)
    return app


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """The test site, served by aiohttp on 127.0.0.1 from a thread's event loop."""
    loop = asyncio.new_event_loop()
    site = Site(url="")
    runner = web.AppRunner(_app(site), access_log=None)

    async def start() -> None:
        await runner.setup()
        tcp = web.TCPSite(runner, "127.0.0.1", 0)
        await tcp.start()
        port = runner.addresses[0][1]
        site.url = f"http://127.0.0.1:{port}"

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, name="browser-test-site", daemon=True)
    thread.start()
    yield site
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One desktop browser for the tests of this module that need nothing fresh."""
    factory = BrowserFactory(tmp_path_factory.mktemp("browsers"), artifacts_dir())
    yield factory(label="shared")
    factory.close_all()


def test_a_filled_form_is_posted_and_its_answer_shown(shared: Browser, site: Site) -> None:
    shared.open(f"{site.url}/form")
    shared.fill("database", "orders")
    shared.fill("reason", "INC-42: refund stuck")
    shared.select("role", "Read and write")
    shared.press("Request access")

    assert "Requested orders" in shared.text()
    assert site.posts[-1] == {
        "database": "orders",
        "reason": "INC-42: refund stuck",
        "role": "rw",
        "csrf": "t0ken",
    }
    assert shared.current_url == f"{site.url}/form"


def test_wait_for_text_sees_what_an_external_script_adds(shared: Browser, site: Site) -> None:
    shared.open(f"{site.url}/form")
    shared.follow("Later page")
    assert "Waiting for approval" in shared.text()  # the script has not run yet

    shared.wait_for_text("Approved by carol")
    shared.wait_until_gone("Waiting for approval")

    assert shared.console_errors() == []


def test_wait_for_text_fails_with_the_page_text(shared: Browser, site: Site) -> None:
    shared.open(f"{site.url}/form")

    with pytest.raises(AssertionError, match=r"(?s)'Denied' did not appear.*Reason"):
        shared.wait_for_text("Denied", timeout=0.2)


def test_an_inline_script_under_the_csp_is_a_console_error(browser: Browser, site: Site) -> None:
    browser.open(f"{site.url}/inline")

    assert "ran inline" not in browser.text()
    errors = browser.console_errors()
    assert len(errors) == 1
    assert "Content Security Policy" in errors[0]
    assert "script-src 'self'" in errors[0]


def test_a_clean_page_has_no_console_errors(shared: Browser, site: Site) -> None:
    shared.open(f"{site.url}/clean")
    shared.wait_for_text("Approved by carol")

    assert shared.console_errors() == []


def test_a_screenshot_is_a_png_file(shared: Browser, site: Site) -> None:
    shared.open(f"{site.url}/form")

    path = shared.screenshot("harness form")

    data = path.read_bytes()
    assert path.name == "harness_form.png"
    assert path.parent.name == "screenshots"
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 900)


def test_the_phone_viewport_takes_effect(browser_factory: BrowserFactory, site: Site) -> None:
    phone = browser_factory(PHONE, label="phone")
    phone.open(f"{site.url}/form")

    assert phone.viewport_size() == (390, 844)
    width, height = struct.unpack(">II", phone.screenshot("harness phone").read_bytes()[16:24])
    assert (width, height) == (390 * 3, 844 * 3)


def test_press_names_the_buttons_present_when_none_matches(shared: Browser, site: Site) -> None:
    shared.open(f"{site.url}/form")

    with pytest.raises(AssertionError) as failure:
        shared.press("Approve")

    assert str(failure.value) == (
        f"no button 'Approve' on {site.url}/form; buttons: ['Request access', 'Cancel']"
    )


def test_fill_names_the_fields_present_when_none_matches(shared: Browser, site: Site) -> None:
    shared.open(f"{site.url}/form")

    with pytest.raises(AssertionError) as failure:
        shared.fill("duration", "1h")

    assert str(failure.value) == (
        f"no field named 'duration' on {site.url}/form; fields: ['database', 'reason']"
    )


def test_an_ambiguous_button_is_refused_unless_scoped(shared: Browser, site: Site) -> None:
    shared.open(f"{site.url}/twice")

    with pytest.raises(AssertionError, match=r"^2 of button 'Approve' on .*pass within="):
        shared.press("Approve")
    shared.press("Approve", within="#second")

    assert "Approved 2" in shared.text()


def test_each_browser_is_a_person_with_cookies_of_their_own(
    browser_factory: BrowserFactory, site: Site
) -> None:
    alice = browser_factory(label="alice")
    carol = browser_factory(label="carol")
    alice.open(f"{site.url}/form")
    carol.open(f"{site.url}/clean")

    session = alice.cookies()["session"]
    assert (session["value"], session["httpOnly"], session["sameSite"]) == ("s1", True, "Strict")
    assert carol.cookies() == {}
    assert [b.label for b in browser_factory.browsers] == ["alice", "carol"]


def test_failure_evidence_is_a_screenshot_and_the_page_of_each_browser(
    browser_factory: BrowserFactory, site: Site
) -> None:
    alice = browser_factory(label="alice")
    alice.open(f"{site.url}/inline")
    browser_factory(label="carol").close()

    sections = dict(browser_factory.failure_evidence("test_x"))

    assert list(sections) == ["browser alice: page", "browser alice: console errors"]
    page = sections["browser alice: page"]
    assert page.startswith(f"{site.url}/inline\nscreenshot: ")
    assert page.endswith("Inline page")
    shot = Path(page.splitlines()[1].removeprefix("screenshot: "))
    assert shot.name == "test_x-alice.png"
    assert shot.read_bytes()[:4] == b"\x89PNG"
    assert "Content Security Policy" in sections["browser alice: console errors"]


def test_a_missing_chromium_fails_saying_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(browser_module, "CHROMEDRIVER", tmp_path / "chromedriver")

    with pytest.raises(pytest.fail.Exception) as failure:
        browser_module.require_chromium()

    assert str(failure.value) == (
        "the browser tests need Debian's Chromium and ChromeDriver; missing: "
        f"{tmp_path / 'chromedriver'}; run `bash scripts/ensure-deps.sh --browser` "
        "(or `apt-get install -y chromium chromium-driver`)"
    )
