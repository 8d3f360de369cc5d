"""`make demo` runs to completion unattended, as a newcomer's first command would, and says
which sign-in it offers: the bundled local OpenID provider with Node.js, else API tokens."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from proxy.demo.cluster import free_loopback_port
from proxy.demo.local_idp import NodeUnavailable, node_binary
from proxy.demo.sign_in import start_sign_in

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT = 300
STOPPED = re.compile(
    r"^Stopped pgwarden \(pid \d+\)(, the OpenID provider at (\S+))? and PostgreSQL on .*; "
    r"removed ",
    re.MULTILINE,
)
PROVIDER_LINE = re.compile(
    r"^sign-in: a local OpenID provider at http://127\.0\.0\.1:\d+ \(alice / carol, passwords "
    r"below\) — or use the tokens printed$",
    re.MULTILINE,
)
TOKENS_LINE = (
    "sign-in: API tokens (Node.js 20.19+ and npm not found: install them for single sign-on)"
)
REQUEST_PAGE = re.compile(
    r"^    \(or in the web console, on the request's page: "
    r"http://127\.0\.0\.1:\d+/console/requests/([0-9a-f]+)\)$",
    re.MULTILINE,
)
NODE_TOOLS = frozenset({"node", "nodejs", "npm", "npx", "corepack"})


def node_is_here() -> bool:
    try:
        node_binary()
    except NodeUnavailable:
        return False
    return shutil.which("npm") is not None


def run_demo(env: dict[str, str]) -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", "demo"], cwd=ROOT,
        env={**env, "PGWARDEN_DEMO_NONINTERACTIVE": "1"}, capture_output=True, text=True,
        timeout=DEMO_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def assert_the_whole_story(out: str) -> None:
    assert "permission denied for table orders" in out
    assert 'pgwarden: access to "shop" (read-only) was revoked by carol: investigation done' in out
    assert "ok:" in out  # pgwarden audit verify
    assert "  $ pgwarden audit verify --config " in out  # runnable as printed: the key is a file
    assert "the head file audit.jsonl.head vouches for the records up to" in out  # explained
    assert "The demo ran to the end" in out
    assert_the_slack_printout(out)
    page = REQUEST_PAGE.search(out)
    assert page, out
    step_2 = out[: page.start()].rsplit("\n2. ", 1)[1]  # the page of the request approved
    assert f"carol$ pgwarden approve {page.group(1)} --comment ok" in step_2, step_2
    assert out.rstrip().splitlines()[-1].endswith(f'export PATH="{ROOT}/.venv/bin:$PATH"')


def assert_the_slack_printout(out: str) -> None:
    """Slack is not configured: the request's message is shown where it would be posted, with
    its buttons while pending and the outcome once approved (slack_messages.py builds both)."""
    label = "Slack (not configured; this is what would be posted to #channel):"
    asked, approved = (part for part in out.split(label)[1:3])
    assert "*alice* asks for read-only on shop for 2m" in asked
    assert ">investigate order 1042" in asked
    assert "State: pending" in asked
    assert "Approvals: 0 of 1" in asked
    assert "[Approve] [Deny]" in asked.split("\n2. ")[0]
    before_step_3 = approved.split("\n3. ")[0]
    assert "State: active" in before_step_3
    assert "Approvals: 1 of 1 (carol)" in before_step_3
    assert ":white_check_mark: Approved; active until" in before_step_3
    assert "[Approve]" not in before_step_3


def sign_in_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("sign-in:")]


def test_make_demo_runs_the_whole_story_unattended() -> None:
    out = run_demo(dict(os.environ))
    assert_the_whole_story(out)
    lines = out.splitlines()
    assert len(sign_in_lines(out)) == 1
    said_at = lines.index(sign_in_lines(out)[0])
    assert said_at < lines.index(next(line for line in lines if line.startswith("1. "))), out
    stopped = STOPPED.search(out)
    assert stopped, out
    if node_is_here():
        assert PROVIDER_LINE.search(out), out
        assert stopped.group(2), out  # the provider was stopped with the demo, and said so
        assert "it needs 1 more approval from: leads (group)" in out  # the rule names `leads`
    else:
        assert TOKENS_LINE in out, out


def a_path_without_node(bin_dir: Path) -> str:
    """A PATH like ours without Node.js: links to every other program on it, in one folder."""
    bin_dir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        folder = Path(directory)
        if not directory or not folder.is_dir():
            continue
        for program in folder.iterdir():
            link = bin_dir / program.name
            if program.name in NODE_TOOLS or link.exists() or not os.access(program, os.X_OK):
                continue
            link.symlink_to(program)
    return str(bin_dir)


def test_without_node_the_demo_says_it_uses_api_tokens_and_still_runs(tmp_path: Path) -> None:
    path = a_path_without_node(tmp_path / "bin")
    env = {**os.environ, "PATH": path}
    assert subprocess.run(["bash", "-c", "command -v node"], env=env, check=False).returncode
    out = run_demo(env)
    assert_the_whole_story(out)
    assert sign_in_lines(out) == [TOKENS_LINE]
    assert "OpenID" not in out
    stopped = STOPPED.search(out)
    assert stopped, out
    assert not stopped.group(1), out


def test_an_install_that_fails_offline_falls_back_to_tokens_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not node_is_here():
        pytest.skip("no Node.js 20.19+ and npm: the install is never tried")
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # nothing installed yet
    monkeypatch.setenv("npm_config_registry", f"http://127.0.0.1:{free_loopback_port()}/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")  # a registry that refuses, at once
    said: list[str] = []
    sign_in = start_sign_in(tmp_path / "idp", said.append)
    assert sign_in.provider is None
    assert said == [
        f"installing the local OpenID provider with npm (once, into {cache / 'pgwarden'}) ..."
    ]
    assert sign_in.line().startswith(
        "sign-in: API tokens (the local OpenID provider could not run: `npm ci` of the provider "
        "failed: "
    ), sign_in.line()
    left = sorted(path.name for path in (cache / "pgwarden").iterdir())
    assert left == ["idp-install.lock"]  # no half install to be taken for a whole one
