"""`pgwarden serve --config FILE`: load the server config and run pgwarden until SIGTERM.

The primary process also starts its workers with hidden options (`--worker`, `--channel-fd`,
`--port`); `proxy/runtime/serve.py` does the running.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from proxy.config import load_config
from proxy.errors import PgwardenError
from proxy.runtime.serve import WorkerArgs, run_event_loop, serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="the server config file")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    # Set by the primary when it starts worker processes (proxy.workers > 1); not for people.
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--channel-fd", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    who = f"[worker {args.worker}] " if args.worker else ""
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s",
    )
    if args.worker and args.channel_fd < 0:
        print("pgwarden: --worker is for the processes pgwarden starts itself", file=sys.stderr)
        return 2
    worker = WorkerArgs(args.worker, args.channel_fd, args.port) if args.worker else None
    try:
        config = load_config(args.config)
        run_event_loop(serve(config, args.config, worker))
    except PgwardenError as exc:
        print(f"pgwarden: {exc}", file=sys.stderr)
        return 1
    return 0
