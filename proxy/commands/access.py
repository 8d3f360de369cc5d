"""`pgwarden credentials | psql | sessions | kill`: using a grant, and watching over sessions.

`credentials ID` asks the server for a new temporary password (each call replaces the previous
one) and prints a ready `postgresql://` URI on stdout — so `psql "$(pgwarden credentials ID)"`
works — and its expiry on stderr. `psql ID [-- ARGS]` does the same and then *becomes* psql
(`exec`), with the credential in `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE` and
`PGSSLMODE`: never on a command line, where `ps` would show it to every user of the machine.
psql's own exit status is then the command's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from proxy.commands import render
from proxy.commands.transport import EXIT_CODES, EXIT_USAGE, ApiClient, add_json_flag, segment

PSQL = "psql"


def add_credentials(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", metavar="ID", help="an active request of yours")
    add_json_flag(parser)


def add_psql(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request_id", metavar="ID", help="an active request of yours")
    parser.add_argument(
        "psql_args", nargs=argparse.REMAINDER, metavar="-- ARGS",
        help="arguments for psql after --, e.g. -- -c 'select 1'",
    )  # fmt: skip
    parser.epilog = EXIT_CODES + "\n\nOnce psql starts, the exit status is psql's own."
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def add_sessions(parser: argparse.ArgumentParser) -> None:
    add_json_flag(parser)


def add_kill(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session_id", metavar="SESSION_ID", help="from `pgwarden sessions`")
    parser.add_argument("--reason", default="", help="why (shown to the session's user)")
    add_json_flag(parser)


def run_credentials(args: argparse.Namespace, client: ApiClient) -> int:
    credential = client.post(f"/api/v1/requests/{segment(args.request_id)}/credentials")
    if args.json:
        print(json.dumps(credential, indent=2))
        return 0
    print(credential["dsn"])
    print(
        f"expires {render.when(credential['expires_at'])}; a new `pgwarden credentials` "
        "replaces this password",
        file=sys.stderr,
    )
    return 0


def run_psql(args: argparse.Namespace, client: ApiClient) -> int:
    extra: list[str] = list(args.psql_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    psql = shutil.which(PSQL)
    if psql is None:
        print("pgwarden: psql is not installed or not on PATH (install the PostgreSQL client, "
              "or use: pgwarden credentials ID)", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    credential = client.post(f"/api/v1/requests/{segment(args.request_id)}/credentials")
    env = dict(os.environ)
    env.update(
        PGHOST=str(credential["host"]),
        PGPORT=str(credential["port"]),
        PGUSER=str(credential["user"]),
        PGPASSWORD=str(credential["password"]),
        PGDATABASE=str(credential["database"]),
        PGSSLMODE=str(credential["sslmode"]),
    )
    print(f"pgwarden: connecting to {render.clean(credential['database'])} until "
          f"{render.when(credential['expires_at'])}", file=sys.stderr)  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(psql, [PSQL, *extra], env)  # noqa: S606 - psql, found on PATH, by design


def run_sessions(args: argparse.Namespace, client: ApiClient) -> int:
    sessions = client.get("/api/v1/sessions")["sessions"]
    if args.json:
        print(json.dumps({"sessions": sessions}, indent=2))
        return 0
    if not sessions:
        print("no live sessions that you can see")
        return 0
    reference = render.now()
    rows = [
        (s["id"], s["user"], s["target"], s["access_level"], s["client_address"],
         render.short_time(s["started_at"], reference), render.when(s["ends_at"], reference))
        for s in sessions
    ]  # fmt: skip
    print(render.table(("SESSION", "USER", "TARGET", "LEVEL", "CLIENT", "STARTED", "ENDS"), rows))
    return 0


def run_kill(args: argparse.Namespace, client: ApiClient) -> int:
    body = {"reason": args.reason} if args.reason else None
    result = client.delete(f"/api/v1/sessions/{segment(args.session_id)}", body)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    session = result["session"]
    who = render.clean(f"{session['user']} on {session['target']} ({session['access_level']})")
    if result["ended"]:
        print(f"session {render.clean(session['id'])} of {who} ended")
    else:
        print(f"session {render.clean(session['id'])} of {who} is ending (not gone yet)")
    return 0
