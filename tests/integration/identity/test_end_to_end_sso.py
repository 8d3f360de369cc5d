"""Single sign-on end to end (issue 18's "done when"): a real `pgwarden serve` with `identity.oidc`
pointed at the test OpenID provider, the real CLI as processes (`python -m proxy login`), and the
provider's real pages played by the browser stand-in.

Alice signs in with the device flow (the test reads the code from the CLI's output and enters it
at the provider), carol with the browser flow (PKCE; the test follows the printed address at the
provider and delivers the redirect to the CLI's loopback listener). Neither is in the policy's
`users:`; the approval rule names the group `leads`, which carol has only at the provider. Alice
asks, carol approves, alice connects through the proxy with psycopg. Carol is then taken out of
`leads` at the provider: her next command refreshes her session (the server's `session_ttl` of
1m is within the CLI's refresh margin, so every command refreshes first) and she can no longer
approve (nor see the request: the API shows requests to their requester, approvers and
admins); removed from the provider, she is told to sign in again. And: logout, then a command;
a session file others can read.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.idp import Idp, sso_config
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.served import Served, serving

pytestmark = pytest.mark.integration

CLI_TIMEOUT = 90.0  # seconds: a device login polls every 5 s (the provider's interval)
DEVICE_PROMPT = re.compile(r"^To sign in, open (\S+) and enter the code (\S+)$")
SIGNED_IN = re.compile(r"^signed in as (\S+) \(groups: ([^)]*)\) until \d\d:\d\d UTC$")
MAX_PROMPT_LINES = 10  # lines the browser login prints before the address


@dataclass
class Person:
    """One person's CLI: their own config dir (where `pgwarden login` keeps the session)."""

    name: str
    served: Served
    home: Path

    @property
    def session_file(self) -> Path:
        return self.home / "pgwarden" / "session.json"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PGWARDEN_TOKEN"}
        return {**env, "PGWARDEN_URL": self.served.url, "XDG_CONFIG_HOME": str(self.home),
                "BROWSER": "true"}  # fmt: skip

    def start(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "proxy", *argv], env=self.env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", *argv], env=self.env(), capture_output=True,
            text=True, timeout=CLI_TIMEOUT, check=False,
        )  # fmt: skip

    def json(self, *argv: str) -> Any:
        done = self.run(*argv, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def stored(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.session_file.read_text())
        return document


def finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    out, err = process.communicate(timeout=CLI_TIMEOUT)
    assert process.returncode == 0, out + err
    return out, err


def device_login(person: Person, idp: Idp) -> str:
    """`pgwarden login` with the code the CLI shows, entered at the provider; the last line."""
    process = person.start("login")
    assert process.stdout is not None
    prompt = process.stdout.readline().strip()
    match = DEVICE_PROMPT.match(prompt)
    assert match, prompt
    page = idp.approve_device(match.group(1), match.group(2), user=person.name)
    assert page.kind == "device-done"
    out, _ = finish(process)
    return out.splitlines()[-1]


def browser_login(person: Person, idp: Idp) -> str:
    """`pgwarden login --browser --no-open`: the printed address followed at the provider, its
    redirect delivered to the CLI's loopback listener; the last line."""
    process = person.start("login", "--browser", "--no-open")
    assert process.stdout is not None
    seen = []
    for _ in range(MAX_PROMPT_LINES):
        seen.append(process.stdout.readline().strip())
        if seen[-1].startswith(idp.issuer):
            break
    else:
        raise AssertionError(f"no sign-in address in {seen}")
    redirect = idp.authorize(seen[-1], user=person.name)
    assert redirect.startswith("http://127.0.0.1:"), redirect
    with urllib.request.urlopen(redirect, timeout=30) as page:
        assert "close this tab" in page.read().decode()
    out, _ = finish(process)
    return out.splitlines()[-1]


def ask(alice: Person, reason: str) -> str:
    created = alice.json("request", "orders", "--access", "read-only", "--duration", "30m",
                         "--reason", reason)  # fmt: skip
    assert created["state"] == "pending", created
    return str(created["id"])


def test_device_and_browser_sign_in_grant_access_and_a_group_removed_at_the_provider_ends_approving(
    deployment: PgwardenDeployment, private_idp: Idp, tmp_path: Path
) -> None:
    config = sso_config(deployment, tmp_path, private_idp, session_ttl="1m")
    with serving(config, tmp_path / "state.db") as served:
        alice = Person("alice", served, tmp_path / "alice")
        carol = Person("carol", served, tmp_path / "carol")

        line = device_login(alice, private_idp)
        assert SIGNED_IN.match(line), line
        assert SIGNED_IN.match(line).groups() == ("alice", "engineers")  # type: ignore[union-attr]
        assert oct(alice.session_file.stat().st_mode & 0o777) == "0o600"
        line = browser_login(carol, private_idp)
        assert SIGNED_IN.match(line).groups() == ("carol", "leads, engineers")  # type: ignore[union-attr]

        request_id = ask(alice, "incident 42")
        refused = alice.run("approve", request_id)
        assert refused.returncode == 1  # alice is no lead
        approved = carol.run("approve", request_id)
        assert approved.returncode == 0, approved.stderr
        assert approved.stdout.startswith(f"approved: request {request_id} is active")

        credential = alice.json("credentials", request_id)
        assert credential["user"] == "alice"
        with psycopg.connect(credential["dsn"], connect_timeout=10) as conn:
            (count,) = conn.execute("SELECT count(*) FROM items").fetchone()  # type: ignore[misc]
            assert count >= 1

        private_idp.set_groups("carol", ["engineers"])  # out of leads, at the provider only
        second = ask(alice, "incident 43")
        refused = carol.run("approve", second)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert carol.stored()["groups"] == ["engineers"]  # her session was refreshed first
        # No longer an approver, she cannot even see the request (the API's visibility rule).
        assert refused.stderr.startswith(f"pgwarden: no request {second}"), refused.stderr
        assert [r["id"] for r in carol.json("requests")["requests"]] == []
        assert alice.json("show", second)["state"] == "pending"

        private_idp.remove_user("carol")  # she left the organization
        ended = carol.run("requests")
        assert ended.returncode == 2, ended.stdout + ended.stderr
        assert ended.stderr.strip() == (
            "pgwarden: your pgwarden session ended; sign in again with: pgwarden login"
        )


@pytest.fixture(scope="module")
def served(
    deployment: PgwardenDeployment, idp: Idp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("sso")
    with serving(
        sso_config(deployment, directory, idp, session_ttl="1m"), directory / "state.db"
    ) as running:
        yield running


def test_after_logout_the_session_is_gone_here_and_at_the_server(
    served: Served, idp: Idp, tmp_path: Path
) -> None:
    alice = Person("alice", served, tmp_path)
    assert SIGNED_IN.match(device_login(alice, idp))
    token = alice.stored()["session_token"]
    done = alice.run("logout")
    assert (done.returncode, done.stdout.strip()) == (
        0,
        "signed out: the server ended your session",
    )
    assert not alice.session_file.exists()
    after = alice.run("requests")
    assert after.returncode == 2
    assert "not signed in: sign in with: pgwarden login" in after.stderr
    status, _ = bearer_call(served, token)
    assert status == 401  # revoked at the server, not only forgotten here


def bearer_call(served: Served, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{served.url}/api/v1/requests", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, json.loads(refused.read())


def test_a_session_file_others_can_read_is_refused(
    served: Served, idp: Idp, tmp_path: Path
) -> None:
    alice = Person("alice", served, tmp_path)
    assert SIGNED_IN.match(device_login(alice, idp))
    assert alice.run("requests").returncode == 0
    alice.session_file.chmod(0o644)
    done = alice.run("requests")
    assert done.returncode == 2
    assert "can be read by others (mode 0644)" in done.stderr
    assert "pgwarden logout && pgwarden login" in done.stderr
    assert alice.run("logout").returncode == 0  # and the way out works
    assert not alice.session_file.exists()
