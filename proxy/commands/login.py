"""`pgwarden login` and `pgwarden logout`: single sign-on through the pgwarden server.

The CLI never talks to the identity provider's token endpoint: the server holds the client
secret and runs the flows (`/api/v1/auth/...`), keeping each flow's state in the state store, so
any replica can finish it. `login` signs in with the device authorization grant (RFC 8628: a URL
and a code to enter on any device, so it works over SSH), or with `--browser`, the code flow with
PKCE and a loopback redirect (RFC 8252: `loopback_callback.py`); the server made `state`, the
nonce and the PKCE verifier, and the CLI checks `state` too before handing the code over. The
session the server answers is stored by `session_file.py`; `logout` revokes it at the server
(and the provider's refresh token, sent along since the server keeps none) and deletes the
file, and still deletes the file when the server cannot be reached, saying so.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import webbrowser
from datetime import UTC, datetime
from time import sleep
from urllib.parse import parse_qs, urlsplit

from proxy.clock import SYSTEM_CLOCK
from proxy.commands import render
from proxy.commands.client_config import ClientConfig
from proxy.commands.loopback_callback import CallbackListener
from proxy.commands.session_file import (
    StoredSession,
    delete_session,
    read_session,
    session_from_answer,
    write_session,
)
from proxy.commands.transport import (
    AUTH_PATH,
    ApiClient,
    JsonObject,
    Refused,
    Unreachable,
    add_json_flag,
    public_command,
)

BROWSER_TIMEOUT = 300.0  # seconds to wait for the browser's redirect
MAX_DEVICE_FLOW = 1800  # seconds: the longest device code lifetime we wait out, whatever it says
DEFAULT_INTERVAL, MAX_INTERVAL = 5, 60  # seconds between polls (RFC 8628's default is 5)
EXIT_INTERRUPTED = 130


class SignInFailed(Refused):
    """The sign-in did not complete for a reason found here (exit 1, like a server refusal)."""

    def __init__(self, message: str) -> None:
        super().__init__(401, "sign_in_failed", message)


def add_login_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--browser", action="store_true",
        help="sign in with a browser on this machine (code flow with PKCE) instead of a code",
    )  # fmt: skip
    parser.add_argument(
        "--no-open", action="store_true",
        help="with --browser: print the sign-in address instead of opening a browser",
    )  # fmt: skip
    parser.add_argument(
        "--port", type=int, default=0, metavar="PORT",
        help="with --browser: receive the redirect on this port of 127.0.0.1 (for a provider "
             "that compares the registered port exactly; by default any free port)",
    )  # fmt: skip
    add_json_flag(parser)


def add_logout_arguments(parser: argparse.ArgumentParser) -> None:
    add_json_flag(parser)


def _login(args: argparse.Namespace, client: ApiClient) -> int:
    path = client.config.session_file
    assert path is not None  # load_client_config always names it
    try:
        answer = _sign_in(args, client)
    except KeyboardInterrupt:
        print("pgwarden: sign-in cancelled; nothing was stored", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        session = session_from_answer(answer, client.url)
    except ValueError as exc:
        raise Refused(200, "bad_response", f"the server's session is malformed: {exc}") from None
    write_session(path, session)
    if client.config.token:
        print("pgwarden: note: PGWARDEN_TOKEN (or token: in cli.yaml) is set, and commands use "
              "that token rather than this sign-in while it is", file=sys.stderr)  # fmt: skip
    if args.json:
        print(json.dumps({"user": session.user, "groups": list(session.groups),
                          "expires_at": session.expires_at.isoformat()}))  # fmt: skip
    else:
        print(signed_in_line(session, SYSTEM_CLOCK.now()))
    return 0


def _sign_in(args: argparse.Namespace, client: ApiClient) -> JsonObject:
    """The flow the person asked for, or the device flow: the server's session answer."""
    offered = client.get(AUTH_PATH).get("oidc")
    if not isinstance(offered, dict):
        raise SignInFailed(
            f"pgwarden at {client.url} has no single sign-on configured: ask an admin for an "
            "API token (pgwarden token create YOUR_NAME) and set PGWARDEN_TOKEN"
        )
    if args.browser:
        return browser_flow(client, open_browser=not args.no_open, port=args.port)
    if not offered.get("device_flow"):
        raise SignInFailed(
            "the identity provider offers no sign-in with a code: sign in with: "
            "pgwarden login --browser"
        )
    return device_flow(client)


run_login = public_command(_login)


def signed_in_line(session: StoredSession, now: datetime) -> str:
    """`signed in as alice (groups: engineers) until 15:04 UTC`."""
    groups = f"groups: {', '.join(session.groups)}" if session.groups else "no groups"
    line = f"signed in as {session.user} ({groups}) until {short_time(session.expires_at, now)}"
    return render.clean(line)


def short_time(at: datetime, now: datetime) -> str:
    at = at.astimezone(UTC)
    return (
        f"{at:%H:%M} UTC" if at.date() == now.astimezone(UTC).date() else f"{at:%Y-%m-%d %H:%M} UTC"
    )


# --- the device flow --------------------------------------------------------------------------


def device_flow(client: ApiClient) -> JsonObject:
    """Show the code, then poll until the person has finished (the session) or the code ends."""
    started = client.post(f"{AUTH_PATH}/device", {})
    flow_id = _text(started, "flow_id")
    uri, code = _web_address(started, "verification_uri"), _text(started, "user_code")
    print(render.clean(f"To sign in, open {uri} and enter the code {code}"), flush=True)
    complete = started.get("verification_uri_complete")
    if isinstance(complete, str) and complete:
        print(render.clean(f"(or open {_web_address(started, 'verification_uri_complete')} "
                           "where the code is filled in)"), flush=True)  # fmt: skip
    print("waiting for you to finish signing in (Ctrl-C to stop)...", file=sys.stderr, flush=True)
    interval = _seconds(started.get("interval"), DEFAULT_INTERVAL, MAX_INTERVAL)
    lifetime = _seconds(started.get("expires_in"), MAX_DEVICE_FLOW, MAX_DEVICE_FLOW)
    return poll_device(client, flow_id, interval, lifetime)


def poll_device(client: ApiClient, flow_id: str, interval: int, lifetime: int) -> JsonObject:
    """Poll every `interval` seconds (longer if the server asks) for at most `lifetime`."""
    deadline = SYSTEM_CLOCK.monotonic() + lifetime
    for _ in range(lifetime // interval + 1):  # the interval only grows: enough polls
        sleep(interval)
        answer = client.post(f"{AUTH_PATH}/device/poll", {"flow_id": flow_id})
        if answer.get("status") != "pending":
            return answer
        interval = max(interval, _seconds(answer.get("interval"), interval, MAX_INTERVAL))
        if SYSTEM_CLOCK.monotonic() + interval > deadline:
            break
    raise SignInFailed("the code expired before the sign-in finished: run pgwarden login again")


# --- the browser flow -------------------------------------------------------------------------


def browser_flow(client: ApiClient, *, open_browser: bool, port: int = 0) -> JsonObject:
    """Send the browser to the provider, take its redirect on loopback, let the server finish."""
    try:
        listener = CallbackListener(port)
    except (OSError, OverflowError) as exc:
        raise SignInFailed(f"cannot listen on 127.0.0.1:{port} for the browser: {exc}") from None
    with listener:
        started = client.post(f"{AUTH_PATH}/browser", {"redirect_uri": listener.redirect_uri})
        flow_id, url = _text(started, "flow_id"), _web_address(started, "authorization_url")
        state = parse_qs(urlsplit(url).query).get("state", [""])[0]
        if not state:
            raise Refused(200, "bad_response", "the server's sign-in address carries no state")
        print("To sign in, open this address in your browser"
              f"{' (opening it now)' if open_browser else ''}:", flush=True)  # fmt: skip
        print(render.clean(url), flush=True)
        if open_browser:
            webbrowser.open(url)
        print("waiting for the browser (Ctrl-C to stop)...", file=sys.stderr, flush=True)
        params = listener.wait(BROWSER_TIMEOUT)
    if params is None:
        raise SignInFailed(
            f"the browser did not come back within {BROWSER_TIMEOUT / 60:.0f} minutes: "
            "run pgwarden login --browser again"
        )
    return _finish(client, flow_id, state, params)


def _finish(client: ApiClient, flow_id: str, state: str, params: dict[str, str]) -> JsonObject:
    if "error" in params:
        why = params.get("error_description") or params["error"]
        raise SignInFailed(render.clean(f"the identity provider refused the sign-in: {why}"))
    if not secrets.compare_digest(params.get("state", "").encode(), state.encode()):
        raise SignInFailed(
            "the browser came back with the answer of another sign-in (state mismatch): "
            "run pgwarden login --browser again"
        )
    if not params.get("code"):
        raise SignInFailed("the browser came back without a code: run pgwarden login --browser")
    body = {"flow_id": flow_id, "code": params["code"], "state": state}
    if params.get("iss"):
        body["iss"] = params["iss"]  # RFC 9207: the server checks who answered
    return client.post(f"{AUTH_PATH}/browser/finish", body)


# --- logout -----------------------------------------------------------------------------------


def _logout(args: argparse.Namespace, client: ApiClient) -> int:
    path = client.config.session_file
    assert path is not None
    session = read_session(path, allow_exposed=True)  # a leaked one is what to revoke first
    if session is None:
        _say(args, "not signed in: nothing to do", signed_out=False, told=False)
        return 0
    holder = ApiClient(ClientConfig(session.url, session.session_token))
    try:
        # The server keeps no refresh token: it is sent along to be revoked at the provider.
        refresh = {"refresh_token": session.refresh_token} if session.refresh_token else {}
        holder.post(f"{AUTH_PATH}/logout", refresh)
        told, note = True, "signed out: the server ended your session"
    except Refused as exc:
        told = exc.status == 401
        note = (
            "signed out (the server had already ended your session)"
            if told
            else f"signed out on this machine; the server did not confirm: {exc.message}"
        )
    except Unreachable:
        told = False
        until = short_time(session.expires_at, SYSTEM_CLOCK.now())
        note = (f"signed out on this machine; the server at {session.url} was not told (cannot "
                f"reach it), so the session stays valid there until {until}")  # fmt: skip
    delete_session(path)
    _say(args, note, signed_out=True, told=told)
    return 0


run_logout = public_command(_logout)


def _say(args: argparse.Namespace, note: str, *, signed_out: bool, told: bool) -> None:
    if args.json:
        print(json.dumps({"signed_out": signed_out, "server_told": told, "message": note}))
    else:
        print(note, file=sys.stdout if told or not signed_out else sys.stderr)


# --- checking the server's answers ------------------------------------------------------------


def _text(document: JsonObject, key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value:
        raise Refused(200, "bad_response", f"the server's answer has no {key}")
    return value


def _web_address(document: JsonObject, key: str) -> str:
    value = _text(document, key)
    if urlsplit(value).scheme not in ("https", "http"):
        raise Refused(200, "bad_response", f"the server's {key} is not a web address")
    return value


def _seconds(value: object, default: int, ceiling: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return default
    return min(value, ceiling)
