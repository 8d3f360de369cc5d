"""Where the CLI finds the server and its credential: the environment, else a small YAML file.

`PGWARDEN_URL` and `PGWARDEN_TOKEN` win; each one not set is read from the config file,
`$XDG_CONFIG_HOME/pgwarden/cli.yaml` (by default `~/.config/pgwarden/cli.yaml`):

    url: https://pgwarden.internal:8080
    token: pgw_...

An API token (automation, or people without single sign-on) is used when there is one; else the
session of `pgwarden login` (`session_file.py`), which `transport.py` opens and refreshes.

The file is read strictly (unknown keys are errors). It holds a secret, so a file that others can
read draws a warning. The URL must be http or https; a plain-http URL to a host that is not this
machine draws a warning too, since the token would cross the network in clear text.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from proxy.addresses import is_loopback
from proxy.commands.session_file import session_path

CONFIG_KEYS = frozenset({"url", "token"})


class ClientConfigError(Exception):
    """The CLI cannot work out where the server is or how to authenticate (exit status 2)."""


@dataclass(frozen=True, slots=True)
class ClientConfig:
    url: str  # without a trailing slash
    token: str = field(repr=False)  # an API token or a session token; "": use the session file
    session_file: Path | None = None  # where `pgwarden login` keeps the session


def config_file(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "pgwarden" / "cli.yaml"


def load_client_config(
    env: Mapping[str, str] | None = None, *, need_credential: bool = True
) -> ClientConfig:
    """The server and the credential; `token` is "" when the session file is to be used (it
    exists), or with `need_credential=False` (login and logout need the URL only)."""
    env = os.environ if env is None else env
    url, token = env.get("PGWARDEN_URL", ""), env.get("PGWARDEN_TOKEN", "")
    path = config_file(env)
    if (not url or not token) and path.exists():
        stored = _read_file(path)
        url, token = url or stored.get("url", ""), token or stored.get("token", "")
    where = f"set PGWARDEN_URL and PGWARDEN_TOKEN, or write url: and token: in {path}"
    if not url:
        raise ClientConfigError(f"no server URL: {where}")
    session = session_path(env)
    if not token and need_credential and not session.exists():
        raise ClientConfigError(
            f"no API token and not signed in: sign in with: pgwarden login, or {where} (an admin "
            "creates a token on the server host with: pgwarden token create YOUR_NAME)"
        )
    return ClientConfig(_check_url(url), token.strip(), session)


def _read_file(path: Path) -> dict[str, str]:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
        document = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ClientConfigError(f"cannot read {path}: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ClientConfigError(f"{path} must be a mapping with url: and token:")
    unknown = sorted(str(k) for k in document if k not in CONFIG_KEYS)
    if unknown:
        raise ClientConfigError(f"{path}: unknown key(s) {', '.join(unknown)} (known: url, token)")
    for key, value in document.items():
        if not isinstance(value, str):
            raise ClientConfigError(f"{path}: {key} must be text")
    if "token" in document and mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"pgwarden: warning: {path} holds a token and others can read it "
              f"(chmod 600 {path})", file=sys.stderr)  # fmt: skip
    return {str(k): str(v) for k, v in document.items()}


def _check_url(url: str) -> str:
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        raise ClientConfigError(f"PGWARDEN_URL {url[:80]!r} is not a valid URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientConfigError(
            f"PGWARDEN_URL must be an http:// or https:// URL, e.g. http://127.0.0.1:8080 "
            f"(got {url[:80]!r})"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        print(f"pgwarden: warning: {parts.hostname} is reached over plain http; your token "
              "crosses the network unencrypted", file=sys.stderr)  # fmt: skip
    return url
