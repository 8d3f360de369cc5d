"""`make demo` as a person meets it: the commands it prints work when pasted, and Ctrl-C cleans up.

The demo runs in its own process group with a terminal on stdin (so it stays up, as it does for a
person); the block it prints is pasted into a separate bash with the venv off PATH and no
PGWARDEN_* variables, and Ctrl-C is the terminal's: SIGINT to the whole process group. The
single sign-on block is followed the same way: `pgwarden login` as alice with the password the
demo printed, her part at the local OpenID provider played by the tests' browser stand-in.
The web console's printed address answers, and carol signs in there as printed (single sign-on
at the provider with her password, or without Node.js her token) and finds alice's request in
her inbox; a browser without JavaScript (aiohttp with a cookie jar) plays her.
"""

from __future__ import annotations

import asyncio
import os
import pty
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from proxy.demo.handover import BLOCK_START, CONSOLE_START, SIGN_IN_START
from proxy.demo.local_idp import NodeUnavailable, node_binary
from tests.fixtures.idp_browser import IdpBrowser
from tests.integration.test_demo import a_path_without_node

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
STARTUP_SECONDS = 180
STOPPED = re.compile(
    r"^Stopped pgwarden \(pid \d+\)(?:, the OpenID provider at \S+)? and PostgreSQL on \S+; "
    r"removed (\S+) .* and (\S+) "
)
PROVIDER = re.compile(r"^sign-in: a local OpenID provider at (http://127\.0\.0\.1:\d+) ")
DEVICE_PROMPT = re.compile(r"^To sign in, open (\S+) and enter the code (\S+)$")
LOGIN_SECONDS = 120  # the device flow polls every 5 s: a few polls, and the CLI's start-ups
CONSOLE = re.compile(rf"^{re.escape(CONSOLE_START)} (http://127\.0\.0\.1:\d+/console/)$")
CONSOLE_TOKEN = re.compile(r"^  (alice|carol)  (pgw_\S+)$")
CONSOLE_PASSWORD = re.compile(r"at the provider sign in as carol / (\S+)$", re.MULTILINE)
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM to a process group a failed test left running, SIGKILL if it lingers: the demo
    then stops its PostgreSQL and pgwarden (their own sessions, a SIGKILL would leave them)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


class RunningDemo:
    """`make demo` with a pty on stdin; its stdout read line by line on a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self._primary, replica = pty.openpty()
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "demo"], cwd=ROOT, env=env, stdin=replica,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        os.close(replica)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def read_until(self, prefix: str, timeout: float = STARTUP_SECONDS) -> None:
        while True:
            line = self._queue.get(timeout=timeout)
            assert line is not None, "the demo ended early:\n" + self.output()
            self.lines.append(line)
            if line.startswith(prefix):
                return

    def ctrl_c(self, sent: signal.Signals = signal.SIGINT) -> tuple[str, str]:
        """SIGINT to the process group, as a terminal sends it; the rest of stdout and stderr."""
        os.killpg(self.process.pid, sent)
        self.process.wait(timeout=60)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        assert self.process.stderr is not None
        return self.output(), self.process.stderr.read()

    def output(self) -> str:
        return "\n".join(self.lines)

    def close(self) -> None:
        stop_group(self.process)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        os.close(self._primary)


@contextmanager
def running_demo(**extra: str) -> Iterator[RunningDemo]:
    demo = RunningDemo({**os.environ, **extra})
    try:
        yield demo
    finally:
        demo.close()


def pasted_block(lines: list[str], title: str = BLOCK_START) -> list[str]:
    """The commands under the `title` line ("Try it in another terminal"), unindented."""
    start = next(i for i, line in enumerate(lines) if title in line) + 1
    block: list[str] = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        block.append(line[2:])
    return block


def a_fresh_shell_env(home: Path) -> dict[str, str]:
    """A second terminal: no venv on PATH, no PGWARDEN_* variables, an empty home."""
    path = [p for p in os.environ.get("PATH", "").split(":") if p and Path(p) != VENV_BIN]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGWARDEN", "VIRTUAL_ENV"))}
    return {**env, "PATH": ":".join(path) or "/usr/bin:/bin", "HOME": str(home)}


def run_pasted(block: list[str], env: dict[str, str]) -> list[tuple[str, int, str]]:
    """Each line in one bash, in order (exports carry over); each line's status and output."""
    marker = "__pgwarden_test_status__"
    script = "".join(f"{line}\necho {marker} $?\n" for line in block)
    result = subprocess.run(
        ["bash", "--noprofile", "--norc"], input=script, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    statuses = re.findall(rf"^{marker} (\d+)$", result.stdout, flags=re.MULTILINE)
    outputs = re.split(rf"^{marker} \d+\n", result.stdout, flags=re.MULTILINE)
    assert len(statuses) == len(block), result.stdout + result.stderr
    return [(line, int(s), out) for line, s, out in zip(block, statuses, outputs, strict=False)]


class PastedShell:
    """A block pasted into one bash whose output is read as it comes (a command may wait on
    the person, as `pgwarden login` does); each line's status marked as in `run_pasted`."""

    MARKER = "__pgwarden_test_status__"

    def __init__(self, block: list[str], env: dict[str, str]) -> None:
        self.block = block
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True,
        )  # fmt: skip
        assert self.process.stdin is not None
        self.process.stdin.write("".join(f"{line}\necho {self.MARKER} $?\n" for line in block))
        self.process.stdin.close()
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = LOGIN_SECONDS) -> re.Match[str]:
        while True:
            line = self._queue.get(timeout=timeout)
            assert line is not None, "the shell ended first:\n" + "\n".join(self.lines)
            self.lines.append(line)
            if match := pattern.match(line):
                return match

    def results(self, timeout: float = LOGIN_SECONDS) -> list[tuple[str, int, str]]:
        """Each line, its status and its output, once the shell has run them all."""
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        self.process.wait(timeout=timeout)
        text = "".join(f"{line}\n" for line in self.lines)
        statuses = re.findall(rf"^{self.MARKER} (\d+)$", text, flags=re.MULTILINE)
        outputs = re.split(rf"^{self.MARKER} \d+\n", text, flags=re.MULTILINE)
        assert len(statuses) == len(self.block), text
        return [(line, int(s), out) for line, s, out in zip(self.block, statuses, outputs,
                                                             strict=False)]  # fmt: skip

    def close(self) -> None:
        stop_group(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()


async def sign_in_at_the_provider(issuer: str, user: str, password: str, uri: str,
                                  code: str) -> None:  # fmt: skip
    """The person's part of the device flow, on the provider's real pages."""
    async with IdpBrowser(issuer, {user: password}) as browser:
        await browser.approve_device(uri, code, user=user)


class Console:
    """A person's browser on the demo's web console, without JavaScript: cookies kept, forms
    sent with the page's CSRF token and the `Origin` a browser adds, redirects shown, not
    followed (except by `open`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.origin = url.removesuffix("/console/")
        self.csrf = ""
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Console:
        # unsafe=True: keep the cookies of a host named by IP address (127.0.0.1)
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=30)
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def open(self, url: str) -> tuple[str, int, str]:
        """GET `url`, following redirects: the final URL, status and page; keeps its CSRF token."""
        assert self._session is not None
        async with self._session.get(url) as got:
            text = await got.text()
        if match := CSRF.search(text):
            self.csrf = match.group(1)
        return str(got.url), got.status, text

    async def post(self, path: str, **fields: str) -> tuple[int, str]:
        """Submit a form of the last page opened: the status and where it redirects."""
        assert self._session is not None
        form = {"csrf_token": self.csrf, "next": "/console/", **fields}
        async with self._session.post(self.origin + path, data=form, allow_redirects=False,
                                      headers={"Origin": self.origin}) as got:  # fmt: skip
            return got.status, got.headers.get("Location", "")

    async def back_from_provider(self, url: str) -> tuple[int, str]:
        assert self._session is not None
        async with self._session.get(url, allow_redirects=False) as got:
            return got.status, got.headers.get("Location", "")

    async def sign_in_page(self, *, sso: bool) -> None:
        """The printed address leads a newcomer to the sign-in page, SSO offered or not."""
        final, status, page = await self.open(self.url)
        assert (status, final.split("?")[0]) == (200, self.origin + "/console/signin"), page
        assert "Sign in with a token" in page
        assert ("Sign in with single sign-on" in page) is sso, page
        assert self.csrf, page

    async def inbox(self) -> str:
        final, status, page = await self.open(self.url)
        assert (status, final) == (200, self.url), page
        assert "Waiting for you" in page, page
        return page


async def the_sign_in_page(url: str, *, sso: bool) -> None:
    async with Console(url) as console:
        await console.sign_in_page(sso=sso)


async def carol_with_her_token(url: str, token: str) -> str:
    """carol's inbox, signed in with the token the demo printed for her."""
    async with Console(url) as console:
        await console.sign_in_page(sso=False)
        assert await console.post("/console/signin/token", token=token) == (303, "/console/")
        return await console.inbox()


async def carol_with_single_sign_on(url: str, issuer: str, password: str) -> str:
    """carol's inbox, signed in at the provider with the password the demo printed for her."""
    async with Console(url) as console, IdpBrowser(issuer, {"carol": password}) as browser:
        await console.sign_in_page(sso=True)
        status, to_provider = await console.post("/console/signin/sso")
        assert status == 303, to_provider
        assert to_provider.startswith(issuer + "/"), to_provider
        back = await browser.authorize(to_provider, user="carol")
        assert back.startswith(url + "signin/callback?"), back
        assert await console.back_from_provider(back) == (303, "/console/")
        return await console.inbox()


def printed_console(lines: list[str]) -> str:
    found = [m.group(1) for line in lines if (m := CONSOLE.match(line))]
    assert len(found) == 1, "\n".join(lines)
    return found[0]


def pending_request(block: list[str]) -> str:
    """The id of alice's request the demo left pending, from `pgwarden approve ID` in `block`."""
    return next(line.split()[3] for line in block if " pgwarden approve " in line)


def node_is_here() -> bool:
    try:
        node_binary()
    except NodeUnavailable:
        return False
    return shutil.which("npm") is not None


def assert_cleaned_up(out: str, err: str) -> None:
    assert "Traceback" not in out + err, out + err
    stopped = [m for line in out.splitlines() if (m := STOPPED.match(line))]
    assert stopped, out
    for directory in stopped[0].groups():
        assert not Path(directory).exists(), f"{directory} is still there"


def test_the_printed_commands_work_in_a_second_terminal_and_ctrl_c_cleans_up(
    tmp_path: Path,
) -> None:
    env = a_fresh_shell_env(tmp_path)
    assert subprocess.run(["bash", "-c", "command -v pgwarden"], env=env, check=False).returncode
    with running_demo() as demo:
        demo.read_until("Press Ctrl-C")
        block = pasted_block(demo.lines)
        assert block[0] == f'export PATH="{VENV_BIN}:$PATH"'
        sso = any(PROVIDER.match(line) for line in demo.lines)
        asyncio.run(the_sign_in_page(printed_console(demo.lines), sso=sso))
        assert any(line.startswith("pgwarden requests") for line in block)
        assert any(line.startswith("pgwarden audit verify") for line in block)
        results = run_pasted(block, env)
        failed = [(line, status, out) for line, status, out in results if status != 0]
        assert not failed, failed
        by_command = {line.split()[1] if line.startswith("pgwarden") else line: out
                      for line, _, out in results}  # fmt: skip
        assert "pending" in by_command["requests"]
        assert "ok: " in by_command["audit"]
        assert "1200" in by_command["psql"]
        out, err = demo.ctrl_c()
    assert "Ctrl-C: stopping the demo." in out
    assert_cleaned_up(out, err)
    assert (
        out.splitlines()[-1]
        == f'To type pgwarden\'s commands in your shell: export PATH="{VENV_BIN}:$PATH"'
    )


@pytest.mark.parametrize(
    ("sent", "said"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")], ids=["int", "term"]
)
def test_ctrl_c_during_the_walkthrough_says_what_it_stopped_and_removed(
    sent: signal.Signals, said: str
) -> None:
    with running_demo(PGWARDEN_DEMO_NONINTERACTIVE="1") as demo:
        demo.read_until("2. carol")
        out, err = demo.ctrl_c(sent)
    assert f"{said}: stopping the demo." in out
    assert "The demo ran to the end" not in out
    assert_cleaned_up(out, err)


def test_the_printed_sign_in_makes_you_alice_with_her_printed_password(tmp_path: Path) -> None:
    if not node_is_here():
        if os.environ.get("PGWARDEN_TEST_REQUIRE_NODE") == "1":
            pytest.fail("the demo's single sign-on needs Node.js 20.19+ and npm", pytrace=False)
        pytest.skip("no Node.js 20.19+ and npm: the demo offers API tokens only")
    env = a_fresh_shell_env(tmp_path)
    env.pop("XDG_CONFIG_HOME", None)  # the session goes to this test's home, nowhere else
    with running_demo() as demo:
        demo.read_until("Press Ctrl-C")
        said = demo.output()
        provider = next((m for line in demo.lines if (m := PROVIDER.match(line))), None)
        password = re.search(r"sign in as alice / (\S+) ", said)
        assert provider, said
        assert password, said
        block = pasted_block(demo.lines, SIGN_IN_START)
        assert block[0] == f'export PATH="{VENV_BIN}:$PATH"'
        assert block[2:] == ["pgwarden login", "pgwarden requests"], block
        shell = PastedShell(block, env)
        try:
            uri, code = shell.wait_for(DEVICE_PROMPT).groups()
            assert uri.startswith(provider.group(1) + "/"), uri
            asyncio.run(
                sign_in_at_the_provider(provider.group(1), "alice", password.group(1), uri, code)
            )
            results = shell.results()
        finally:
            shell.close()
        failed = [(line, status, out) for line, status, out in results if status != 0]
        assert not failed, failed
        login, requests = results[2][2], results[3][2]
        assert "signed in as alice (groups: engineers)" in login, login
        assert "pending" in requests, requests
        assert "trying pgwarden" in requests, requests
        session = tmp_path / ".config" / "pgwarden" / "session.json"
        assert session.stat().st_mode & 0o777 == 0o600
        console, carols = printed_console(demo.lines), CONSOLE_PASSWORD.search(said)
        assert carols, said
        inbox = asyncio.run(carol_with_single_sign_on(console, provider.group(1), carols[1]))
        assert pending_request(pasted_block(demo.lines)) in inbox, inbox
        out, err = demo.ctrl_c()
    assert_cleaned_up(out, err)
    assert re.search(r"^Stopped pgwarden \(pid \d+\), the OpenID provider at ", out, re.M), out
    port = int(provider.group(1).rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError):  # the provider is gone, not just said to be
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_without_node_the_console_takes_the_tokens_printed(tmp_path: Path) -> None:
    with running_demo(PATH=a_path_without_node(tmp_path / "bin")) as demo:
        demo.read_until("Press Ctrl-C")
        assert not any(PROVIDER.match(line) for line in demo.lines), demo.output()
        tokens = dict(m.groups() for line in demo.lines if (m := CONSOLE_TOKEN.match(line)))
        assert sorted(tokens) == ["alice", "carol"], demo.output()
        inbox = asyncio.run(carol_with_her_token(printed_console(demo.lines), tokens["carol"]))
        assert pending_request(pasted_block(demo.lines)) in inbox, inbox
        out, err = demo.ctrl_c()
    assert_cleaned_up(out, err)
