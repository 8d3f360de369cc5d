"""`pgwarden tls dev-cert`: a throwaway CA and server certificate for trying TLS out.

For development and evaluation only: in production, use a certificate from your own CA. The
command prints the two lines to add to the server config and how clients verify the server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxy.errors import PgwardenError
from proxy.net.certs import DEFAULT_HOSTNAMES, DEFAULT_VALID_DAYS, generate_dev_certificates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("tls"), help="directory for the files (default: ./tls)"
    )
    parser.add_argument(
        "--hostname", action="append", dest="hostnames", metavar="NAME",
        help="a DNS name or IP address clients use to reach pgwarden (repeatable; default: "
        + ", ".join(DEFAULT_HOSTNAMES) + ")",
    )  # fmt: skip
    parser.add_argument("--days", type=int, default=DEFAULT_VALID_DAYS, help="validity in days")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def run(args: argparse.Namespace) -> int:
    try:
        certs = generate_dev_certificates(
            args.out, tuple(args.hostnames or DEFAULT_HOSTNAMES), args.days, overwrite=args.force
        )
    except PgwardenError as exc:
        print(f"pgwarden: {exc.message}", file=sys.stderr)
        return 1
    print(f"wrote {certs.ca_cert}, {certs.ca_key}, {certs.server_cert}, {certs.server_key}")
    print("in the server config:")
    print(f"  proxy: {{tls: {{cert_file: {certs.server_cert}, key_file: {certs.server_key}}}}}")
    print("clients verify pgwarden with:")
    print(f"  psql 'host=localhost ... sslmode=verify-full sslrootcert={certs.ca_cert}'")
    return 0
