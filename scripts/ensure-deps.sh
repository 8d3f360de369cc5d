#!/usr/bin/env bash
# Installs, with apt-get and only when missing, what pgwarden's tests, demo and benchmark need
# besides the Python venv: PostgreSQL (initdb, pg_ctl) and its clients (psql, pgbench); with
# --pgbouncer also pgbouncer (for `make bench`); with --browser also Debian's Chromium and its
# ChromeDriver (for tests/browser, which drive /usr/bin/chromium through /usr/bin/chromedriver).
# Options combine: `ensure-deps.sh --browser --pgbouncer`. Debian's packages start services of
# their own; pgwarden's tools run their own servers on free loopback ports, so those are stopped.
set -euo pipefail

usage="usage: bash scripts/ensure-deps.sh [--pgbouncer] [--browser]"
want_pgbouncer=0
want_browser=0
for arg in "$@"; do
  case "$arg" in
    --pgbouncer) want_pgbouncer=1 ;;
    --browser) want_browser=1 ;;
    -h | --help) echo "$usage"; exit 0 ;;
    *) echo "ensure-deps.sh: unknown option $arg; $usage" >&2; exit 2 ;;
  esac
done

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
if [ "$want_browser" = 1 ]; then
  # The exact paths: tests/fixtures/browser.py names them, so Selenium never looks for a driver.
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
fi
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
