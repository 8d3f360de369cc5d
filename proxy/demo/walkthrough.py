"""`pgwarden demo`: the whole story on one machine, told with the real commands.

A throwaway PostgreSQL with a sample database, `pgwarden serve` as its own process, and the CLI
and psql as a person would type them: alice asks for read-only access, carol approves, alice
queries, a write is refused, carol revokes while alice's query runs and the session ends with its
message; then the audit log is verified. pgwarden stays up for the user to try things until
Ctrl-C (not with PGWARDEN_DEMO_NONINTERACTIVE=1), with commands to paste into a second terminal
and the web console's address with how to sign in there (`handover.py`); everything is stopped
and removed at the end, Ctrl-C at any point included, and the demo says what it stopped and
removed. With Node.js, a local OpenID provider runs beside it and the hand-over offers `pgwarden
login`, and the console's single sign-on, as alice or carol (`sign_in.py`); the story itself runs
on API tokens, as automation would, and one `sign-in:` line near the top says which is offered.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from proxy.clock import SYSTEM_CLOCK
from proxy.demo.cluster import LocalCluster, PostgresUnavailable, free_loopback_port
from proxy.demo.cluster import start_local_cluster as start_cluster
from proxy.demo.handover import (
    BLOCK_START,
    EXPLANATION,
    SIGN_IN_START,
    console_url,
    console_with_sso,
    console_with_tokens,
    explain_audit_summary,
    path_line,
    second_terminal_block,
    sign_in_block,
    sign_in_explanation,
)
from proxy.demo.sample import DemoSecrets, PsqlMissing, create_shop, psql_binary, write_files
from proxy.demo.sign_in import SignIn, start_sign_in
from proxy.demo.slack_preview import slack_preview

START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
LISTENING = re.compile(r"pgwarden API listening on")


class DemoFailed(RuntimeError):
    """A step of the walkthrough did not do what the story says."""


class Demo:
    """The running pieces, and how to run a command as alice or carol."""

    def __init__(self, directory: Path, cluster: LocalCluster, secrets: DemoSecrets,
                 sign_in: SignIn) -> None:  # fmt: skip
        self.directory = directory
        self.cluster = cluster
        self.sign_in = sign_in
        self.proxy_port, self.api_port = free_loopback_port(), free_loopback_port()
        ports = (self.proxy_port, self.api_port)
        identity = sign_in.config_section(directory)
        self.config = write_files(directory, cluster, secrets, ports, identity)
        self.server_env = {**os.environ, **secrets.environment()}
        self.tokens: dict[str, str] = {}
        self.server: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "pgwarden.log"

    def start_server(self) -> None:
        with self.log.open("wb") as log:
            self.server = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "proxy", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.server_env,
                start_new_session=True,
            )
        deadline = SYSTEM_CLOCK.monotonic() + START_TIMEOUT
        while not LISTENING.search(self.log.read_text(errors="replace")):
            if self.server.poll() is not None or SYSTEM_CLOCK.monotonic() > deadline:
                raise DemoFailed(f"pgwarden did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.server.wait(10)
            if self.server.poll() is None:
                self.server.kill()

    def token_for(self, user: str) -> None:
        out = self.pgwarden(None, "token", "create", user, "--config", str(self.config), "--json")
        self.tokens[user] = json.loads(out)["token"]

    def pgwarden(self, user: str | None, *args: str, show: bool = False) -> str:
        """Run the CLI as `user` (with their token), return its stdout."""
        env = {**os.environ, "PGWARDEN_URL": f"http://127.0.0.1:{self.api_port}"}
        if user is not None:
            env["PGWARDEN_TOKEN"] = self.tokens[user]
        if show:
            say(f"  {user}$ pgwarden {shlex.join(args)}")
        result = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "proxy", *args], env=env, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise DemoFailed(f"pgwarden {shlex.join(args)} failed:\n{result.stderr}")
        return result.stdout


def say(text: str = "") -> None:
    print(text, flush=True)


def indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.rstrip().splitlines())


def psql(dsn: str, sql: str, *, show: bool = True) -> subprocess.CompletedProcess[str]:
    if show:
        say(f'  alice$ psql "$DSN" -c {shlex.quote(sql)}')
    return subprocess.run(  # noqa: S603
        [psql_binary(), "-X", dsn, "-c", sql], capture_output=True, text=True,
        timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip


def walkthrough(demo: Demo) -> None:
    """The story, step by step, with the real commands and their real output."""
    say("\n1. alice asks for two minutes of read-only access to the shop database:")
    asked = demo.pgwarden("alice", "request", "shop", "--access", "read-only", "--duration", "2m",
                          "--reason", "investigate order 1042", show=True)  # fmt: skip
    say(indent(asked))
    pending = json.loads(demo.pgwarden("alice", "requests", "--state", "pending", "--json"))
    request_id = pending["requests"][0]["id"]
    say(indent(slack_preview(demo.directory, request_id)))
    say("\n2. carol, an approver, approves it (alice could not approve her own request):")
    say(indent(demo.pgwarden("carol", "approve", request_id, "--comment", "ok", show=True)))
    say(f"    (or in the web console, on the request's page: {console_url(demo.api_port)}"
        f"requests/{request_id})")  # fmt: skip
    say(indent(slack_preview(demo.directory, request_id)))
    say("\n3. alice gets a temporary credential (shown once; pgwarden keeps only a verifier):")
    creds = json.loads(demo.pgwarden("alice", "credentials", request_id, "--json", show=True))
    say(f"    DSN={creds['dsn'].replace(creds['password'], '********')}")
    dsn = creds["dsn"]
    say("\n4. alice connects with plain psql, through pgwarden, and queries:")
    say(indent(expect_ok(psql(dsn, "SELECT count(*) AS orders, sum(total) FROM orders"))))
    say("\n5. a write is refused by the database (the read-only role has SELECT only):")
    say(indent(expect_error(psql(dsn, "DELETE FROM orders WHERE id = 1042"), "permission denied")))
    say("\n6. alice starts a long query; carol revokes the grant while it runs:")
    ended = revoke_during_query(demo, dsn, request_id)
    say(indent(ended))


def revoke_during_query(demo: Demo, dsn: str, request_id: str) -> str:
    say('  alice$ psql "$DSN" -c "SELECT pg_sleep(600)"     (in the background)')
    long_query = subprocess.Popen(  # noqa: S603
        [psql_binary(), "-X", dsn, "-c", "SELECT pg_sleep(600)"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(1.0)  # let the query reach the database
    demo.pgwarden("carol", "revoke", request_id, "--reason", "investigation done", show=True)
    try:
        output, _ = long_query.communicate(timeout=10)
    except subprocess.TimeoutExpired as exc:
        long_query.kill()
        raise DemoFailed("the session did not end after the revocation") from exc
    if "was revoked by carol" not in output:
        raise DemoFailed(f"unexpected end of the session:\n{output}")
    return output


def expect_ok(result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode != 0:
        raise DemoFailed(f"psql failed:\n{result.stderr}")
    return result.stdout


def expect_error(result: subprocess.CompletedProcess[str], fragment: str) -> str:
    if result.returncode == 0 or fragment not in result.stderr:
        raise DemoFailed(
            f"expected an error with {fragment!r}, got:\n{result.stdout}{result.stderr}"
        )
    return result.stderr


def epilogue(demo: Demo) -> None:
    say("\n7. everything above is in the audit log, and the chain verifies:")
    args = ("audit", "verify", "--config", str(demo.config))
    say(f"  $ pgwarden {shlex.join(args)}")
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True,
        timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    say(indent(result.stdout + result.stderr))
    if result.returncode != 0:
        raise DemoFailed("the audit log did not verify")
    if explained := explain_audit_summary(result.stdout):
        say(indent(explained))
    say(f"\n   metrics: http://127.0.0.1:{demo.api_port}/metrics")


def try_it_yourself(demo: Demo) -> None:
    asked = demo.pgwarden("alice", "request", "shop", "--access", "read-only", "--duration",
                          "10m", "--reason", "trying pgwarden", "--json")  # fmt: skip
    lines = second_terminal_block(
        api_port=demo.api_port, alice=demo.tokens["alice"], carol=demo.tokens["carol"],
        request_id=json.loads(asked)["id"], config=demo.config,
    )  # fmt: skip
    say(f"\npgwarden is still running. {BLOCK_START}, pasting these lines as they are:")
    for line in lines:
        say(f"  {line}")
    say(EXPLANATION)
    if demo.sign_in.provider is not None:
        offer_sign_in(demo)
    say(f"\n{offer_console(demo)}")
    say(f"Config, state, audit log and pgwarden.log are in {demo.directory}.")
    provider = ", the OpenID provider" if demo.sign_in.provider is not None else ""
    say(f"Press Ctrl-C here to stop pgwarden{provider} and PostgreSQL and remove their files.")
    try:
        while demo.server is not None and demo.server.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt as exc:
        say(f"\n{_why(exc)}: stopping the demo.")
        return
    if demo.server is not None and demo.server.poll() is not None:
        say(f"pgwarden exited by itself (status {demo.server.returncode}); see {demo.log}")


def offer_sign_in(demo: Demo) -> None:
    """Single sign-on as alice or carol, for a terminal of its own."""
    say(f"\n{SIGN_IN_START}, in a new terminal:")
    for line in sign_in_block(api_port=demo.api_port):
        say(f"  {line}")
    sign_in = demo.sign_in
    say(sign_in_explanation(sign_in.issuer, sign_in.password("alice"), sign_in.password("carol")))


def offer_console(demo: Demo) -> str:
    """The web console's address and how to sign in there as alice or carol."""
    sign_in = demo.sign_in
    if sign_in.provider is not None:
        alice, carol = sign_in.password("alice"), sign_in.password("carol")
        return console_with_sso(api_port=demo.api_port, alice=alice, carol=carol)
    alice, carol = demo.tokens["alice"], demo.tokens["carol"]
    return console_with_tokens(api_port=demo.api_port, alice=alice, carol=carol)


@contextmanager
def demo_world() -> Iterator[tuple[Demo, DemoSecrets]]:
    say("pgwarden demo: starting a throwaway PostgreSQL with a sample database ...")
    cleaned: list[str] = []
    try:
        cluster = start_cluster()
    except KeyboardInterrupt as exc:
        say(f"\n{_why(exc)}: stopped while PostgreSQL was starting; its files were removed.")
        raise
    directory = Path(tempfile.mkdtemp(prefix="pgwarden-demo-"))
    try:
        secrets = DemoSecrets()
        create_shop(cluster, secrets)
        sign_in = start_sign_in(directory / "idp", say)
        try:
            demo = Demo(directory, cluster, secrets, sign_in)
            try:
                demo.start_server()
                say(f"pgwarden is up: Postgres clients on 127.0.0.1:{demo.proxy_port}, API on "
                    f"127.0.0.1:{demo.api_port}, database on 127.0.0.1:{cluster.port}")  # fmt: skip
                say(sign_in.line())
                demo.token_for("alice")
                demo.token_for("carol")
                yield demo, secrets
            finally:
                _quietly(demo.stop_server)
                if demo.server is not None:
                    cleaned.append(f"pgwarden (pid {demo.server.pid})")
        finally:
            if sign_in.provider is not None:
                _quietly(sign_in.stop)
                cleaned.append(f"the OpenID provider at {sign_in.issuer}")
    except KeyboardInterrupt as exc:
        say(f"\n{_why(exc)}: stopping the demo.")
        raise
    finally:
        _quietly(cluster.stop)
        cleaned.append(f"PostgreSQL on 127.0.0.1:{cluster.port}")
        shutil.rmtree(directory, ignore_errors=True)
        say(f"Stopped {_listed(cleaned)}; removed {directory} (config, state, audit log) "
            f"and {cluster.root} (the database).")  # fmt: skip


def _listed(names: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return " and ".join(filter(None, [", ".join(names[:-1]), *names[-1:]]))


def _why(interrupt: KeyboardInterrupt) -> str:
    """ "Ctrl-C", or the signal that `_stop_on` turned into an interrupt."""
    return str(interrupt.args[0]) if interrupt.args else "Ctrl-C"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_on(signum: int, _frame: object) -> None:
    """Ctrl-C, SIGTERM and SIGHUP (a closed terminal) stop the demo, which then cleans up deaf
    to the next ones: one stop often comes twice (make forwards SIGTERM to the demo after the
    process group got it), and a second interrupt in a `finally` would skip a cleanup step."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise KeyboardInterrupt(*([] if signum == signal.SIGINT else [signal.Signals(signum).name]))


def _quietly(cleanup: Callable[[], None]) -> None:
    """Run a cleanup step deaf to Ctrl-C and the stop signals, so a second one leaves nothing."""
    previous = [signal.signal(stop, signal.SIG_IGN) for stop in STOP_SIGNALS]
    try:
        cleanup()
    finally:
        for stop, handler in zip(STOP_SIGNALS, previous, strict=True):
            signal.signal(stop, handler)


def run(args: argparse.Namespace) -> int:
    interactive = os.environ.get("PGWARDEN_DEMO_NONINTERACTIVE") != "1" and sys.stdin.isatty()
    # Ctrl-C even when started with SIGINT ignored (a background job of a script inherits that,
    # and Python then installs no KeyboardInterrupt): the demo must always clean up on it.
    for stop in STOP_SIGNALS:
        signal.signal(stop, _stop_on)
    finished = False
    try:
        with demo_world() as (demo, _):
            walkthrough(demo)
            epilogue(demo)
            say("\nThe demo ran to the end: request, approval, credential, query, refusal, "
                "revocation, verified audit log.")  # fmt: skip
            finished = True
            if interactive:
                try_it_yourself(demo)
    except (DemoFailed, PostgresUnavailable, PsqlMissing, subprocess.CalledProcessError) as exc:
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else ""
        print(f"pgwarden demo: {exc}\n{detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # What was stopped and removed is already said. 130 = 128 + SIGINT, as a shell says it;
        # a Ctrl-C once the story has run (even a hair before the "Press Ctrl-C" wait) is its end.
        say(f"To type pgwarden's commands in your shell: {path_line()}")
        return 0 if finished else 130
    say(f"To type pgwarden's commands in your shell: {path_line()}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: PGWARDEN_DEMO_NONINTERACTIVE=1 runs the walkthrough and exits."""


__all__: Sequence[str] = ["add_arguments", "run"]
