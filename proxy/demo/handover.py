"""What the demo hands the user at the end: commands to paste into a second terminal, as printed.

Every line of the block runs as it stands in a fresh bash or zsh: the first puts the venv's
`pgwarden` on PATH, the next sets the server URL and alice's token, and the rest use real ids (the
demo files one request for the user to approve) and the config whose key file verifies the audit
log. The demo's last line repeats the PATH line, for the README's commands.

With the local OpenID provider running (`sign_in.py`), a second block signs in as a person
instead: `pgwarden login` shows an address and a code, the person signs in there as alice or
carol with the password printed beside it, and the commands that follow use that session.

Last, the web console's address and how to sign in to it as alice or carol: single sign-on at
the provider with those passwords, or without one, their API tokens to paste.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

BLOCK_START = "Try it in another terminal"
SIGN_IN_START = "Or sign in as a person, with single sign-on through the local OpenID provider"
CONSOLE_START = "Open the web console in a browser:"
QUERY = "SELECT count(*) FROM orders"
AUDIT_SUMMARY = re.compile(r"ok: (\d+) records in (\d+) files?, head seq (\d+)")


def pgwarden_bin_dir() -> Path | None:
    """The directory holding the `pgwarden` script this demo runs from (the venv's bin)."""
    here = Path(os.path.abspath(sys.executable)).parent  # not resolved: the venv's, not /usr's
    if (here / "pgwarden").is_file():
        return here
    found = shutil.which("pgwarden")
    return Path(found).parent if found else None


def path_line() -> str:
    """`export PATH="…/.venv/bin:$PATH"`, or how to install pgwarden when there is no script."""
    bin_dir = pgwarden_bin_dir()
    if bin_dir is None:
        return (
            f"{shlex.quote(sys.executable)} -m pip install -e .   # installs the pgwarden command"
        )
    text = str(bin_dir)
    if re.search(r'["$`\\]', text):
        return f'export PATH={shlex.quote(text)}:"$PATH"'
    return f'export PATH="{text}:$PATH"'


def explain_audit_summary(summary: str) -> str | None:
    """One sentence on `ok: 18 records in 1 file, head seq 16`, or None if it does not match."""
    match = AUDIT_SUMMARY.search(summary)
    if match is None:
        return None
    records, _, head = match.groups()
    commands = (
        "; audit.commands.jsonl is the chain of the token commands, each recorded before it "
        "took effect"
        if "audit.commands.jsonl" in summary
        else ""
    )
    return (
        f"({records} records checked, each sealed by an HMAC over it and the record before it; "
        f"head seq {head}: the head file audit.jsonl.head vouches for the records up to {head}, "
        f"the last synced to disk, so deleting any of them shows{commands})"
    )


def second_terminal_block(
    *, api_port: int, alice: str, carol: str, request_id: str, config: Path
) -> Sequence[str]:
    """The lines to paste, each runnable as printed (no comments: zsh would take them as words)."""
    rid = shlex.quote(request_id)
    return [
        path_line(),
        f"export PGWARDEN_URL=http://127.0.0.1:{api_port} PGWARDEN_TOKEN={shlex.quote(alice)}",
        "pgwarden requests",
        f"PGWARDEN_TOKEN={shlex.quote(carol)} pgwarden approve {rid} --comment 'go ahead'",
        f"pgwarden psql {rid} -- -c {shlex.quote(QUERY)}",
        "pgwarden request shop --access read-write --duration 5m --reason 'trying a write'",
        f"pgwarden audit verify --config {shlex.quote(str(config))}",
    ]


EXPLANATION = """\
The first line puts pgwarden on PATH, the second makes you alice. The demo left a request of
alice's pending: carol approves it (with her token), then alice queries through pgwarden (without
`-- -c ...`, psql's prompt) and asks for read-write, which waits for an approver."""


def sign_in_block(*, api_port: int) -> Sequence[str]:
    """The lines to paste for single sign-on: an API token set in this shell would win over it."""
    return [
        path_line(),
        f"unset PGWARDEN_TOKEN; export PGWARDEN_URL=http://127.0.0.1:{api_port}",
        "pgwarden login",
        "pgwarden requests",
    ]


def sign_in_explanation(issuer: str, alice: str, carol: str) -> str:
    """How to finish `pgwarden login` at the provider, with the demo's passwords."""
    return (
        f"pgwarden login shows an address at {issuer} and a code: open it in a\n"
        f"browser, enter the code, and sign in as alice / {alice} (her group, engineers, comes\n"
        f"from the provider). To approve, sign in as carol / {carol} (group leads): pgwarden\n"
        "logout, then pgwarden login. With a browser on this machine, pgwarden login --browser\n"
        "skips the code. These passwords are made up for this demo, and end with it."
    )


def console_url(api_port: int) -> str:
    return f"http://127.0.0.1:{api_port}/console/"


def console_with_sso(*, api_port: int, alice: str, carol: str) -> str:
    """The console's address, and signing in to it at the provider with the demo's passwords."""
    return (
        f"{CONSOLE_START} {console_url(api_port)}\n"
        f'Choose "Sign in with single sign-on", then at the provider sign in as carol / {carol}\n'
        f"(her inbox lists the requests she may approve) or as alice / {alice}; for both at\n"
        "once, one in a private window."
    )


def console_with_tokens(*, api_port: int, alice: str, carol: str) -> str:
    """The console's address, and the tokens to paste into its sign-in page."""
    return (
        f"{CONSOLE_START} {console_url(api_port)}\n"
        "Sign in by pasting a token: carol's (her inbox lists the requests she may approve) or\n"
        "alice's; for both at once, one in a private window.\n"
        f"  carol  {carol}\n"
        f"  alice  {alice}"
    )
