"""The bundled local OpenID provider: installed with npm, run with Node.js on loopback.

The provider is `oidc-provider` (a certified OpenID Provider implementation from the npm
registry), run by the `.mjs` files in `proxy/demo/idp/` with the people and clients written here
as JSON files. `pgwarden demo` uses it to offer single sign-on; the tests build their provider on
it (tests/fixtures/idp.py). `node_modules(cache)` installs the locked packages once, with
`npm ci`, into `<cache>/idp-node-modules-<hash of the lock file>` (outside the source tree, so
an installed pgwarden works too) and reuses it afterwards. Node resolves ES module imports from
the importing file's own folder (NODE_PATH is ignored for them), so each provider runs a copy of
the `.mjs` files in its own directory beside a symlink to that install.

Needs Node.js 20.19 or later and npm; without them (or when the install fails, offline say)
`NodeUnavailable` or `ProviderFailed` says why, and the demo falls back to API tokens.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proxy.clock import SYSTEM_CLOCK

SOURCE = Path(__file__).with_name("idp")
# oidc-provider 9 supports Node 22 LTS and later and warns on 20, where it works (20.20);
# older releases are untried.
NODE_MIN = (20, 19)
NPM_TIMEOUT = 100.0  # a cold `npm ci` of ~40 small packages takes ~5 s
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
MAX_START_POLLS = 3000  # START_TIMEOUT at 10 ms apiece: the wait is bounded in count too
LISTENING = re.compile(r"^listening (http://127\.0\.0\.1:(\d+))$", re.MULTILINE)
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# Native (RFC 8252) clients: oidc-provider accepts these on any loopback port.
REDIRECT_URIS = ("http://127.0.0.1/callback",)
SUB_NAMESPACE = uuid.UUID("6f1c1c64-45a4-4b53-9a55-4c0b1cf2a1d8")


class NodeUnavailable(Exception):
    """Node.js or npm is missing, or Node.js is too old to run the provider."""


class ProviderFailed(Exception):
    """`npm ci` of the provider failed or took too long (offline, say), or it did not start."""


@dataclass
class Person:
    """One account of the provider; `sub` differs from the username, as at real providers."""

    preferred_username: str
    groups: Any  # a list of names (tests put anything else here to test malformed claims)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    sub: str = ""
    name: str = ""
    email: str = ""
    email_verified: bool = True

    def __post_init__(self) -> None:
        username = self.preferred_username
        self.sub = self.sub or str(uuid.uuid5(SUB_NAMESPACE, username))
        self.name = self.name or username.title()
        self.email = self.email or f"{username}@example.test"


@dataclass(frozen=True)
class Client:
    """A registered client: its id, its secret (None for a public client), its metadata."""

    client_id: str
    secret: str | None
    metadata: dict[str, Any]


def register_client(client_id: str, auth: str, name: str,
                    redirect_uris: Sequence[str] = REDIRECT_URIS) -> Client:  # fmt: skip
    """A native client allowed the code flow (PKCE), the device flow and refresh tokens; with a
    new secret unless `auth` is "none" (a public client)."""
    secret = None if auth == "none" else secrets.token_urlsafe(24)
    metadata: dict[str, Any] = {
        "client_id": client_id, "client_name": name, "application_type": "native",
        "token_endpoint_auth_method": auth,
        "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
        "response_types": ["code"], "redirect_uris": list(redirect_uris),
    }  # fmt: skip
    if secret is not None:
        metadata["client_secret"] = secret
    return Client(client_id, secret, metadata)


@dataclass(frozen=True)
class Lifetimes:
    """Token lifetimes in seconds, as provider.mjs takes them."""

    id_token: int = 300
    access_token: int = 300
    refresh_token: int = 86400


class LocalProvider:
    """One provider process: its issuer, clients and people, and the files it reads them from.

    People may change while it runs (the accounts file is re-read on every lookup); `start()`
    after `stop()` listens on the same port again (same issuer), keeping grants and tokens."""

    def __init__(self, directory: Path, modules: Path, clients: Sequence[Client],
                 people: Sequence[Person], *, lifetimes: Lifetimes | None = None,
                 rotate_refresh_tokens: bool = True,
                 jwks: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.directory = directory
        self.modules = modules
        self.lifetimes = lifetimes or Lifetimes()
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.clients = {client.client_id: client for client in clients}
        self.people = {person.preferred_username: person for person in people}
        self.jwks = jwks  # None: the provider makes an RS256 key at each start
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.issuer = ""

    @property
    def log(self) -> Path:
        return self.directory / "provider.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> None:
        """Start it and wait until it listens; stopped again (and the log in the error) if not."""
        runtime = self._prepare_runtime()
        self._write_json("clients.json", [c.metadata for c in self.clients.values()])
        self.write_people()
        if self.jwks is not None:
            self._write_json("jwks.json", self.jwks)
        with self.log.open("ab") as sink:
            started_at = sink.tell()  # a restart appends: only what follows is this start's
            # Its own session: a terminal's Ctrl-C goes to the demo, which stops it in order.
            self.process = subprocess.Popen(  # noqa: S603 - node and our own files
                self._argv(runtime), stdout=sink, stderr=subprocess.STDOUT, cwd=runtime,
                start_new_session=True,
            )  # fmt: skip
        atexit.register(self.stop)  # a crashed demo must not leave a provider behind
        self.issuer, self.port = self._wait_listening(started_at)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers. Safe to call twice."""
        atexit.unregister(self.stop)
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        self.process = None

    def write_people(self) -> None:
        self._write_json("accounts.json", [asdict(person) for person in self.people.values()])

    def _argv(self, runtime: Path) -> list[str]:
        files = {name: str(self.directory / f"{name}.json")
                 for name in ("clients", "accounts", "jwks", "state")}  # fmt: skip
        rotation = "always" if self.rotate_refresh_tokens else "never"
        argv = [node_binary(), str(runtime / "provider.mjs"), "--port", str(self.port),
                "--clients", files["clients"], "--accounts", files["accounts"],
                "--state", files["state"],
                "--id-token-ttl", str(self.lifetimes.id_token),
                "--access-token-ttl", str(self.lifetimes.access_token),
                "--refresh-token-ttl", str(self.lifetimes.refresh_token),
                "--rotate-refresh-tokens", rotation]  # fmt: skip
        return argv + (["--jwks", files["jwks"]] if self.jwks is not None else [])

    def _prepare_runtime(self) -> Path:
        runtime = self.directory / "runtime"
        runtime.mkdir(parents=True, exist_ok=True)
        for module in SOURCE.glob("*.mjs"):
            shutil.copyfile(module, runtime / module.name)  # the current source at each start
        link = runtime / "node_modules"
        if not link.is_symlink():
            link.symlink_to(self.modules, target_is_directory=True)
        return runtime

    def _write_json(self, name: str, value: object) -> None:
        partial = self.directory / f"{name}.partial"
        # Mode 0600: the files hold the people's passwords and the clients' secrets.
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as sink:
            sink.write(json.dumps(value, indent=2))
        partial.replace(self.directory / name)  # the provider never reads half a file

    def _wait_listening(self, offset: int) -> tuple[str, int]:
        assert self.process is not None
        deadline = SYSTEM_CLOCK.monotonic() + START_TIMEOUT
        for _ in range(MAX_START_POLLS):
            if match := LISTENING.search(self.log_text(), offset):
                return match.group(1), int(match.group(2))
            if self.process.poll() is not None or SYSTEM_CLOCK.monotonic() > deadline:
                break
            time.sleep(0.01)
        status = self.process.poll()
        self.stop()
        log = self.log_text()
        # The first line is all `make demo` shows: say there whether it died or was slow.
        if status is None:
            why = f"it did not say it was listening within {START_TIMEOUT:.0f} s"
        else:
            last = (log[offset:].strip().splitlines() or ["no output"])[-1]
            why = f"it exited with status {status} ({last[:200]})"
        raise ProviderFailed(f"the local OpenID provider did not start: {why}\n{log}")


@functools.cache
def node_binary() -> str:
    """The `node` to run, or NodeUnavailable saying why not."""
    node = shutil.which("node")
    if node is None:
        raise NodeUnavailable("Node.js (`node`) is not on PATH")
    version = subprocess.run(  # noqa: S603 - the node found on PATH, a fixed argument
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < NODE_MIN:
        raise NodeUnavailable(f"Node.js {version or '(unknown)'} is older than {node_min_text()}")
    return node


def node_min_text() -> str:
    return ".".join(map(str, NODE_MIN))


def user_cache(name: str) -> Path:
    """`$XDG_CACHE_HOME/<name>`, by default `~/.cache/<name>`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / name


def installed(cache: Path) -> Path | None:
    """The provider's node_modules in `cache` if installed already (no npm needed), else None."""
    modules = _install_dir(cache) / "node_modules"
    return modules if (modules / "oidc-provider" / "package.json").exists() else None


@functools.cache
def node_modules(cache: Path, timeout: float = NPM_TIMEOUT) -> Path:
    """The provider's node_modules, installed with `npm ci` into `cache` the first time."""
    if (ready := installed(cache)) is not None:
        return ready
    target = _install_dir(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "idp-install.lock").open("w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # another process may be installing it right now
        if not target.exists():
            _npm_ci(target, timeout)
    return target / "node_modules"


def _install_dir(cache: Path) -> Path:
    lock = (SOURCE / "package-lock.json").read_bytes()
    return cache / f"idp-node-modules-{hashlib.sha256(lock).hexdigest()[:16]}"


def _npm_ci(target: Path, timeout: float) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise NodeUnavailable("npm is not on PATH (it installs the local OpenID provider)")
    staging = target.with_name(f"{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(SOURCE / name, staging / name)
    command = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
    try:
        done = subprocess.run(  # noqa: S603 - the npm found on PATH, fixed arguments
            command, cwd=staging, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        done = None
    if done is None or done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)  # complete or absent: never half reused
        if done is None:
            why = f"it took over {timeout:.0f} s: is the npm registry reachable?"
        else:
            why = done.stderr.strip() or f"exit status {done.returncode}"
        raise ProviderFailed(f"`npm ci` of the provider failed: {why}")
    staging.rename(target)
