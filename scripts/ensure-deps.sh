#!/usr/bin/env bash
# Installs, with apt-get and only when missing, what pgwarden's tests, demo and benchmark need
# besides the Python venv: PostgreSQL (initdb, pg_ctl) and its clients (psql, pgbench); with
# --pgbouncer also pgbouncer (for `make bench`). Debian's packages start services of their own;
# pgwarden's tools run their own servers on free loopback ports, so those services are stopped.
set -euo pipefail

want_pgbouncer=0
[ "${1:-}" = "--pgbouncer" ] && want_pgbouncer=1

have_initdb() {
  command -v initdb >/dev/null 2>&1 && return 0
  command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
have_pgbouncer() {
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]
}

missing=()
have_initdb || missing+=(postgresql)
{ command -v pgbench >/dev/null 2>&1 && command -v psql >/dev/null 2>&1; } ||
  missing+=(postgresql-client)
[ "$want_pgbouncer" = 1 ] && { have_pgbouncer || missing+=(pgbouncer); }
[ ${#missing[@]} -eq 0 ] && exit 0

echo "pgwarden: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q "${missing[@]}"
service pgbouncer stop >/dev/null 2>&1 || true
if command -v pg_lsclusters >/dev/null 2>&1; then
  pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
    pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
  done
fi
