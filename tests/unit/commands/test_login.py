"""`pgwarden login`, `logout`, and commands signed in with a session, against a small fake of the
server's single sign-on contract (`/api/v1/auth/...`): real HTTP on loopback, the real CLI
(`main()`), the real session file and the real loopback listener of the browser flow. The real
server and provider are in tests/integration/identity/test_end_to_end_sso.py."""

from __future__ import annotations

import json
import secrets
import socket
import stat
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from proxy.cli import main
from proxy.commands import login
from proxy.commands.session_file import StoredSession, read_session, session_path
from proxy.commands.transport import AUTH_PATH

Run = tuple[int, str, str]


@dataclass
class FakeServer:
    """The contract's server side, as little of it as the CLI needs; every call recorded."""

    port: int = 0
    oidc: dict[str, Any] | None = field(
        default_factory=lambda: {
            "issuer": "https://idp.test",
            "device_flow": True,
            "browser_flow": True,
        }
    )
    pending_polls: int = 1  # polls answered "pending" before the session
    poll_refusal: str | None = None  # answer polls with this 401 instead
    ttl: timedelta = timedelta(hours=1)
    refuse_refresh: bool = False
    groups: list[str] = field(default_factory=lambda: ["engineers"])
    calls: list[tuple[str, str, str, Any]] = field(default_factory=list)  # method, path, auth, body
    sessions: dict[str, datetime] = field(default_factory=dict)  # token -> end
    refresh_tokens: set[str] = field(default_factory=set)
    browser_flows: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> state, uri

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def session(self, user: str = "alice") -> dict[str, Any]:
        token, refresh = f"pgs_{secrets.token_urlsafe(16)}", f"rt_{secrets.token_urlsafe(8)}"
        ends = datetime.now(UTC) + self.ttl
        self.sessions[token] = ends
        self.refresh_tokens.add(refresh)
        return {"session_token": token, "expires_at": ends.isoformat(), "user": user,
                "groups": list(self.groups), "refresh_token": refresh}  # fmt: skip

    def answer(self, method: str, path: str, auth: str, body: Any) -> tuple[int, Any]:
        self.calls.append((method, path, auth, body))
        auth_routes = {
            ("GET", AUTH_PATH): lambda: (200, {"oidc": self.oidc}),
            ("POST", f"{AUTH_PATH}/device"): self._device,
            ("POST", f"{AUTH_PATH}/device/poll"): self._poll,
            ("POST", f"{AUTH_PATH}/browser"): lambda: self._browser(body),
            ("POST", f"{AUTH_PATH}/browser/finish"): lambda: self._finish(body),
            ("POST", f"{AUTH_PATH}/refresh"): lambda: self._refresh(body),
        }
        if (method, path) in auth_routes:
            return auth_routes[method, path]()
        token = auth.removeprefix("Bearer ")
        if self.sessions.get(token, datetime.min.replace(tzinfo=UTC)) <= datetime.now(UTC):
            return 401, {"error": {"code": "unauthorized", "message": "bad bearer token"}}
        if (method, path) == ("POST", f"{AUTH_PATH}/logout"):
            del self.sessions[token]
            return 204, None
        return 200, {"requests": []}

    def _device(self) -> tuple[int, Any]:
        return 200, {"flow_id": "f1", "user_code": "ABCD-EFGH",
                     "verification_uri": "https://idp.test/device",
                     "verification_uri_complete": "https://idp.test/device?user_code=ABCD-EFGH",
                     "interval": 5, "expires_in": 600}  # fmt: skip

    def _poll(self) -> tuple[int, Any]:
        if self.poll_refusal is not None:
            return 401, {"error": {"code": "sign_in_failed", "message": self.poll_refusal}}
        if self.pending_polls > 0:
            self.pending_polls -= 1
            return 202, {"status": "pending", "interval": 5}
        return 200, self.session()

    def _browser(self, body: Any) -> tuple[int, Any]:
        state, flow_id = secrets.token_urlsafe(12), secrets.token_hex(8)
        self.browser_flows[flow_id] = (state, body["redirect_uri"])
        query = urlencode({"state": state, "redirect_uri": body["redirect_uri"]})
        return 200, {"flow_id": flow_id, "authorization_url": f"https://idp.test/auth?{query}"}

    def _finish(self, body: Any) -> tuple[int, Any]:
        state, _ = self.browser_flows.pop(body["flow_id"], ("", ""))
        if not state or body["state"] != state or body["code"] != "good-code":
            return 401, {"error": {"code": "sign_in_failed", "message": "state mismatch"}}
        return 200, self.session("carol")

    def _refresh(self, body: Any) -> tuple[int, Any]:
        if self.refuse_refresh or body["refresh_token"] not in self.refresh_tokens:
            return 401, {"error": {"code": "sign_in_failed", "message": "refresh refused"}}
        self.refresh_tokens.discard(body["refresh_token"])  # rotated, as at the provider
        return 200, self.session()

    def paths(self) -> list[str]:
        return [path for _, path, _, _ in self.calls]


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, document = fake.answer(self.command, self.path,
                                           self.headers.get("Authorization", ""), body)  # fmt: skip
            raw = b"" if document is None else json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = http.server_address[1]
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield fake
    http.shutdown()
    http.server_close()
    thread.join(5)


@pytest.fixture
def cli(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Any:  # fmt: skip
    """`cli(*argv)` -> (status, stdout, stderr), signed in (or not) through `tmp_path`'s config
    dir; polling does not wait."""
    monkeypatch.setenv("PGWARDEN_URL", server.url)
    monkeypatch.delenv("PGWARDEN_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    naps: list[float] = []
    monkeypatch.setattr(login, "sleep", naps.append)

    def run(*argv: str) -> Run:
        capsys.readouterr()
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    run.naps = naps  # type: ignore[attr-defined]
    return run


def stored(tmp_path: Path) -> Path:
    return session_path({"XDG_CONFIG_HOME": str(tmp_path)})


# --- login ------------------------------------------------------------------------------------


def test_device_login_shows_the_code_polls_and_stores_the_session_privately(
    cli: Any, server: FakeServer, tmp_path: Path
) -> None:
    server.pending_polls = 2
    status, out, err = cli("login")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "To sign in, open https://idp.test/device and enter the code ABCD-EFGH"
    assert "https://idp.test/device?user_code=ABCD-EFGH" in lines[1]
    ends = datetime.now(UTC) + server.ttl
    assert lines[-1].startswith("signed in as alice (groups: engineers) until ")
    assert lines[-1].endswith(f"{ends:%H:%M} UTC") or lines[-1].endswith(
        f"{ends - timedelta(minutes=1):%H:%M} UTC")  # fmt: skip
    assert cli.naps == [5, 5, 5]  # the interval before each of the three polls
    assert server.paths().count(f"{AUTH_PATH}/device/poll") == 3
    path = stored(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    session = read_session(path)
    assert session is not None
    assert (session.user, session.groups, session.url) == ("alice", ("engineers",), server.url)
    assert session.session_token in server.sessions
    assert not list(path.parent.glob("*.partial"))


def test_a_refused_device_sign_in_stores_nothing(
    cli: Any, server: FakeServer, tmp_path: Path
) -> None:
    server.poll_refusal = "the person denied the request at the identity provider"
    status, _, err = cli("login")
    assert status == 1
    assert (
        err.splitlines()[-1] == "pgwarden: the person denied the request at the identity provider"
    )
    assert not stored(tmp_path).exists()


def test_an_expiring_code_stops_the_polling(cli: Any, server: FakeServer, tmp_path: Path) -> None:
    server.pending_polls = 10**6
    server_device = server._device

    def short_lived() -> tuple[int, Any]:
        status, body = server_device()
        return status, {**body, "interval": 5, "expires_in": 20}

    server._device = short_lived  # type: ignore[method-assign]
    status, _, err = cli("login")
    assert status == 1
    assert "the code expired before the sign-in finished: run pgwarden login again" in err
    assert len(cli.naps) <= 5  # bounded by the code's life, with the clock or without
    assert not stored(tmp_path).exists()


def test_ctrl_c_while_waiting_cancels_cleanly_and_stores_nothing(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(login, "sleep", interrupted)
    status, _, err = cli("login")
    assert status == 130
    assert err.splitlines()[-1] == "pgwarden: sign-in cancelled; nothing was stored"
    assert not stored(tmp_path).exists()


def test_signing_in_while_a_token_is_set_says_which_one_commands_use(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGWARDEN_TOKEN", "pgw_automation")
    status, _, err = cli("login")
    assert status == 0
    assert "commands use that token rather than this sign-in" in err


@pytest.mark.parametrize(
    ("groups", "ends", "wanted"),
    [
        (("engineers",), "2026-03-02T15:04:59+00:00", "(groups: engineers) until 15:04 UTC"),
        (
            ("leads", "engineers"),
            "2026-03-02T16:04:00+01:00",
            "(groups: leads, engineers) until 15:04 UTC",
        ),
        ((), "2026-03-03T00:10:00+00:00", "(no groups) until 2026-03-03 00:10 UTC"),
    ],
)
def test_the_signed_in_line(groups: tuple[str, ...], ends: str, wanted: str) -> None:
    session = StoredSession("http://x", "pgs_x", datetime.fromisoformat(ends), "alice", groups)
    now = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    assert login.signed_in_line(session, now) == f"signed in as alice {wanted}"


def test_login_says_when_the_server_has_no_single_sign_on(cli: Any, server: FakeServer) -> None:
    server.oidc = None
    status, _, err = cli("login")
    assert status == 1
    assert "has no single sign-on configured" in err
    assert "PGWARDEN_TOKEN" in err


def test_login_without_device_flow_points_to_the_browser(cli: Any, server: FakeServer) -> None:
    assert server.oidc is not None
    server.oidc["device_flow"] = False
    status, _, err = cli("login")
    assert status == 1
    assert "pgwarden login --browser" in err
    assert f"{AUTH_PATH}/device" not in server.paths()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def follow_as_browser(monkeypatch: pytest.MonkeyPatch, code: str, state: str | None) -> list[str]:
    """Make `webbrowser.open` play a browser that the provider sends back at once with `code`
    (and the URL's state, or `state`); the pages it got are returned."""
    pages: list[str] = []

    def browser(url: str) -> bool:
        query = parse_qs(urlsplit(url).query)
        back = {"code": code, "state": query["state"][0] if state is None else state,
                "iss": "https://idp.test"}  # fmt: skip
        with urllib.request.urlopen(f"{query['redirect_uri'][0]}?{urlencode(back)}",
                                    timeout=10) as page:  # fmt: skip
            pages.append(page.read().decode())
        return True

    monkeypatch.setattr(login.webbrowser, "open", browser)
    return pages


@pytest.mark.parametrize("fixed_port", [False, True])
def test_browser_login_takes_the_redirect_on_loopback(
    cli: Any, server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    fixed_port: bool,
) -> None:  # fmt: skip
    pages = follow_as_browser(monkeypatch, "good-code", None)
    port = free_port() if fixed_port else 0
    status, out, err = cli("login", "--browser", *(["--port", str(port)] if port else []))
    assert status == 0, err
    assert "https://idp.test/auth?state=" in out
    assert out.splitlines()[-1].startswith("signed in as carol (groups: engineers) until ")
    assert "you can close this tab" in pages[0].lower()
    (_, _, _, started) = next(c for c in server.calls if c[1] == f"{AUTH_PATH}/browser")
    assert urlsplit(started["redirect_uri"]).hostname == "127.0.0.1"
    assert urlsplit(started["redirect_uri"]).path == "/callback"
    if fixed_port:
        assert urlsplit(started["redirect_uri"]).port == port
    (_, _, _, finish) = next(c for c in server.calls if c[1] == f"{AUTH_PATH}/browser/finish")
    assert (finish["code"], finish["iss"]) == ("good-code", "https://idp.test")
    assert read_session(stored(tmp_path)) is not None


def test_browser_login_refuses_another_sign_ins_state_before_the_server_sees_the_code(
    cli: Any, server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    follow_as_browser(monkeypatch, "good-code", "someone-elses-state")
    status, _, err = cli("login", "--browser")
    assert status == 1
    assert "state mismatch" in err
    assert f"{AUTH_PATH}/browser/finish" not in server.paths()
    assert not stored(tmp_path).exists()


def test_browser_login_with_no_open_only_prints_the_address(
    cli: Any, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    monkeypatch.setattr(login.webbrowser, "open", opened.append)
    monkeypatch.setattr(login, "BROWSER_TIMEOUT", 0.01)
    status, out, err = cli("login", "--browser", "--no-open")
    assert (status, opened) == (1, [])
    assert "https://idp.test/auth?state=" in out
    assert "the browser did not come back within" in err


def test_browser_login_on_a_port_in_use_says_so(
    cli: Any, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _, err = cli("login", "--browser", "--port", str(server.port))
    assert status == 1
    assert f"cannot listen on 127.0.0.1:{server.port} for the browser" in err
    assert f"{AUTH_PATH}/browser" not in server.paths()


# --- commands with the session ----------------------------------------------------------------


def test_commands_use_the_session_and_refresh_it_when_it_ends_soon(
    cli: Any, server: FakeServer, tmp_path: Path
) -> None:
    assert cli("login")[0] == 0
    first = read_session(stored(tmp_path))
    assert first is not None
    assert cli("requests", "--json")[0] == 0
    assert server.calls[-1][2] == f"Bearer {first.session_token}"
    assert f"{AUTH_PATH}/refresh" not in server.paths()

    server.ttl = timedelta(seconds=30)  # within the refresh margin: the next command refreshes
    assert cli("login")[0] == 0
    short = read_session(stored(tmp_path))
    assert short is not None
    status, _, err = cli("requests", "--json")
    assert status == 0, err
    renewed = read_session(stored(tmp_path))
    assert renewed is not None
    assert server.calls[-2][1:4:2] == (
        f"{AUTH_PATH}/refresh",
        {"refresh_token": short.refresh_token},
    )
    assert (
        server.calls[-1][2] == f"Bearer {renewed.session_token}" != f"Bearer {short.session_token}"
    )


def test_a_refused_refresh_asks_to_sign_in_again(
    cli: Any, server: FakeServer, tmp_path: Path
) -> None:
    server.ttl = timedelta(seconds=30)
    assert cli("login")[0] == 0
    server.refuse_refresh = True
    status, _, err = cli("requests")
    assert status == 2
    assert (
        err.strip() == "pgwarden: your pgwarden session ended; sign in again with: pgwarden login"
    )
    status, out, _ = cli("requests", "--json")
    assert json.loads(out)["error"]["code"] == "session_ended"


def test_a_session_the_server_no_longer_takes_asks_to_sign_in_again(
    cli: Any, server: FakeServer
) -> None:
    assert cli("login")[0] == 0
    server.sessions.clear()  # revoked at the server
    status, _, err = cli("requests")
    assert status == 2
    assert "sign in again with: pgwarden login" in err


def test_an_api_token_wins_over_the_session(
    cli: Any, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("login")[0] == 0
    monkeypatch.setenv("PGWARDEN_TOKEN", "pgw_automation")
    status, _, err = cli("requests")
    assert status == 1
    assert server.calls[-1][2] == "Bearer pgw_automation"
    assert "(check PGWARDEN_TOKEN)" in err  # a token's refusal reads as before


def test_a_session_is_not_sent_to_another_server(
    cli: Any, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("login")[0] == 0
    calls = len(server.calls)
    monkeypatch.setenv("PGWARDEN_URL", "http://127.0.0.1:9")
    status, _, err = cli("requests")
    assert status == 2
    assert f"you are signed in to {server.url}, not http://127.0.0.1:9" in err
    assert len(server.calls) == calls


def test_without_token_or_session_the_cli_says_how_to_sign_in(cli: Any) -> None:
    status, _, err = cli("requests")
    assert status == 2
    assert "no API token and not signed in: sign in with: pgwarden login" in err


def test_a_session_file_others_can_read_is_refused(cli: Any, tmp_path: Path) -> None:
    assert cli("login")[0] == 0
    stored(tmp_path).chmod(0o640)
    status, _, err = cli("requests")
    assert status == 2
    assert "can be read by others (mode 0640)" in err
    assert "pgwarden logout && pgwarden login" in err


# --- logout -----------------------------------------------------------------------------------


def test_logout_ends_the_session_at_the_server_and_forgets_it(
    cli: Any, server: FakeServer, tmp_path: Path
) -> None:
    assert cli("login")[0] == 0
    session = read_session(stored(tmp_path))
    assert session is not None
    status, out, _ = cli("logout")
    assert (status, out.strip()) == (0, "signed out: the server ended your session")
    assert server.calls[-1][1:] == (f"{AUTH_PATH}/logout", f"Bearer {session.session_token}",
                                    {"refresh_token": session.refresh_token})  # fmt: skip
    assert session.session_token not in server.sessions
    assert not stored(tmp_path).exists()
    assert cli("logout")[1].strip() == "not signed in: nothing to do"
    status, _, err = cli("requests")
    assert status == 2
    assert "not signed in" in err


def test_logout_revokes_even_a_session_file_others_could_read(
    cli: Any, server: FakeServer, tmp_path: Path
) -> None:
    assert cli("login")[0] == 0
    stored(tmp_path).chmod(0o644)
    assert cli("logout")[0] == 0
    assert not server.sessions
    assert not stored(tmp_path).exists()


def test_logout_offline_forgets_the_session_and_says_the_server_was_not_told(
    cli: Any, server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("login")[0] == 0
    document = json.loads(stored(tmp_path).read_text())
    document["url"] = "http://127.0.0.1:9"  # nobody listens there
    stored(tmp_path).write_text(json.dumps(document))
    status, _, err = cli("logout")
    assert status == 0
    assert "the server at http://127.0.0.1:9 was not told (cannot reach it)" in err
    assert not stored(tmp_path).exists()
