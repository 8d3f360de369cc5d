"""`pgwarden serve --config FILE`: load the server config and run pgwarden until SIGTERM.

The primary process also starts its workers with hidden options (`--worker`, `--channel-fd`,
`--port`); `proxy/runtime/serve.py` does the running.

`--new-state` starts with a new, empty state store where the state file is missing although the
audit log shows pgwarden ran here before (`serve` refuses that otherwise: the grants and API
tokens of the lost store would be forgotten without a word); it is recorded in the audit log, and
refused while the state file exists, so that it stays a one-time decision.

Exit status: 0 stopped by SIGTERM or SIGINT; 2 did not start for a reason a person can fix (the
config, the policy, the audit key, a directory, a lost state file, a certificate, a listen
address: a line on stderr for each problem says which and how to fix it, and nothing was
created); 1 stopped by another error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from proxy.config import ConfigError, load_config
from proxy.errors import PgwardenError
from proxy.runtime.event_loop import run_event_loop
from proxy.runtime.serve import WorkerArgs, serve
from proxy.runtime.startup import StartupError, config_problem

EXIT_FAILED = 1
EXIT_NOT_STARTED = 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="the server config file")
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
        help="DEBUG, INFO, WARNING or ERROR",
    )  # fmt: skip
    parser.add_argument(
        "--new-state", action="store_true",
        help="start with a new, empty state store although the audit log shows an earlier one "
        "(its grants and API tokens are not carried over); only when the state file is missing",
    )  # fmt: skip
    # Set by the primary when it starts worker processes (proxy.workers > 1); not for people.
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--channel-fd", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    who = f"[worker {args.worker}] " if args.worker else ""
    logging.basicConfig(
        level=args.log_level,
        format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s",
    )
    if args.worker and args.channel_fd < 0:
        return _not_started("--worker is for the processes pgwarden starts itself")
    worker = WorkerArgs(args.worker, args.channel_fd, args.port) if args.worker else None
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _not_started(config_problem(exc))
    try:
        run_event_loop(serve(config, args.config, worker, new_state=args.new_state))
    except StartupError as exc:
        return _not_started(*exc.problems)
    except PgwardenError as exc:
        print(f"pgwarden: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _not_started(*problems: str) -> int:
    for problem in problems:
        print(f"pgwarden: {problem}", file=sys.stderr)
    return EXIT_NOT_STARTED
