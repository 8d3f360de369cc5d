"""How the demo's people sign in: a local OpenID provider when Node.js is here, else API tokens.

With Node.js 20.19+ and npm (or the provider already installed), the demo runs the bundled
provider (`local_idp.py`) on a free loopback port with two people, alice (engineers) and carol
(leads), whose passwords it makes up and prints for this demo only, and registers pgwarden with
it as a confidential client, returning to the CLI or to the web console: the server's config gets
`identity.oidc`, the client secret in a file of mode 0600. Without Node.js, or when the install
fails (offline, say, after a bounded wait), the demo goes on with API tokens alone and says why,
in its one `sign-in:` line.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from proxy.demo.local_idp import (
    REDIRECT_URIS,
    Client,
    LocalProvider,
    NodeUnavailable,
    Person,
    ProviderFailed,
    installed,
    node_binary,
    node_min_text,
    node_modules,
    register_client,
    user_cache,
)

CLIENT_ID = "pgwarden"
CACHE = "pgwarden"  # ~/.cache/pgwarden: the demo's own, not the tests' cache
# A cold install takes seconds; a machine offline would otherwise keep the demo waiting on npm's
# retries, when tokens work without it.
NPM_TIMEOUT = 60.0
# The demo's people and their groups at the provider (the policy's approval rule names `leads`).
PEOPLE = {"alice": ("engineers",), "carol": ("leads",)}
SECRET_FILE = "oidc-client.secret"  # noqa: S105 - the file's name, not its content
# The web console's return address (proxy/web/signin_pages.py), beside `pgwarden login
# --browser`'s. The client is native (RFC 8252 section 7.3): the provider matches a loopback
# redirect on any port, so this covers the API's port, picked after the provider starts; the
# path must match exactly.
CONSOLE_CALLBACK = "http://127.0.0.1/console/signin/callback"

IDENTITY = """\
identity:
  oidc: {{issuer: "{issuer}", client_id: {client_id}, client_secret_file: {secret_file}}}
"""


@dataclass
class SignIn:
    """The running provider, or why there is none (the demo then offers tokens only)."""

    provider: LocalProvider | None
    why_not: str = ""

    @property
    def issuer(self) -> str:
        return self.provider.issuer if self.provider is not None else ""

    def password(self, user: str) -> str:
        assert self.provider is not None
        return self.provider.people[user].password

    def line(self) -> str:
        """The one line saying which sign-in the demo offers."""
        if self.provider is None:
            return f"sign-in: API tokens ({self.why_not})"
        return (
            f"sign-in: a local OpenID provider at {self.issuer} (alice / carol, passwords below) "
            "— or use the tokens printed"
        )

    def config_section(self, directory: Path) -> str:
        """The server config's `identity:` section, after writing the client secret (0600)."""
        if self.provider is None:
            return ""
        secret = self.provider.clients[CLIENT_ID].secret
        assert secret is not None
        path = directory / SECRET_FILE
        path.touch(mode=0o600)
        path.write_text(secret + "\n")
        return IDENTITY.format(issuer=self.issuer, client_id=CLIENT_ID, secret_file=SECRET_FILE)

    def stop(self) -> None:
        if self.provider is not None:
            self.provider.stop()


def start_sign_in(directory: Path, say: Callable[[str], None]) -> SignIn:
    """The local provider started in `directory`, or tokens only and why."""
    cache = user_cache(CACHE)
    if shutil.which("node") is None or (installed(cache) is None and not shutil.which("npm")):
        return SignIn(None, f"Node.js {node_min_text()}+ and npm not found: install them for "
                            "single sign-on")  # fmt: skip
    try:
        node_binary()
        if installed(cache) is None:
            say(f"installing the local OpenID provider with npm (once, into {cache}) ...")
        modules = node_modules(cache, NPM_TIMEOUT)
        directory.mkdir(mode=0o700)
        provider = LocalProvider(directory, modules, [_client()], _people())
        provider.start()
    except NodeUnavailable as exc:
        return SignIn(None, f"{exc}: install Node.js {node_min_text()}+ for single sign-on")
    except (ProviderFailed, OSError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(":")
        return SignIn(None, f"the local OpenID provider could not run: {first}")
    return SignIn(provider)


def _client() -> Client:
    redirects = (*REDIRECT_URIS, CONSOLE_CALLBACK)
    return register_client(CLIENT_ID, "client_secret_basic", "pgwarden demo", redirects)


def _people() -> list[Person]:
    # Short passwords to type by hand, made up for this demo and printed with it.
    return [
        Person(name, list(groups), password=secrets.token_urlsafe(9))
        for name, groups in PEOPLE.items()
    ]
