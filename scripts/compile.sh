#!/usr/bin/env bash
# `make compile`: compile the hot modules (proxy/native.py) with mypyc, in place. Without a working
# C compiler pgwarden stays pure Python: that is said, and the build is not an error.
set -uo pipefail
if [ "${1:-}" = "--remove" ]; then  # `make pure`
	find proxy \( -name '*.so' -o -name '_native.json' \) -delete
	exit 0
fi
python=${1:?usage: compile.sh PYTHON | --remove}
log=build/compile.log
mkdir -p build
if "$python" -c 'import sys; from proxy import native; sys.exit(native.mode != "compiled")'; then
	echo "pgwarden: the compiled hot modules are up to date"
	exit 0
fi
if ! command -v "${CC:-cc}" >/dev/null 2>&1; then
	echo "pgwarden: no C compiler (${CC:-cc}): the hot modules stay pure Python"
	exit 0
fi
bash "$(dirname "$0")/compile.sh" --remove  # what an older build left
echo "Compiling pgwarden's hot modules with mypyc (1-2 min; log: $log) ..."
if PGWARDEN_COMPILE=1 "$python" setup.py --quiet build_ext --inplace >"$log" 2>&1; then
	"$python" -c 'from proxy import native; print("pgwarden: hot path", native.describe())'
else
	tail -n 20 "$log"
	echo "pgwarden: compiling failed (above, and $log): the hot modules stay pure Python"
	bash "$(dirname "$0")/compile.sh" --remove
fi
