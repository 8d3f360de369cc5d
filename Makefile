# pgwarden: `make test` installs what it needs into .venv and runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# Branch coverage the sans-I/O core must keep (the issue tracker's bar for wire and auth).
CORE_COVERAGE_MIN ?= 90

.PHONY: test lint typecheck unit coverage clean bench compat deps test-deps demo ha-trials compile pure

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "pgwarden needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	@echo "Installing pgwarden and its dev tools into $(VENV) (once; about 30 s, quiet unless it fails) ..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'setuptools>=77' wheel
	$(BIN)/pip install --quiet -e '.[dev]'
	@echo "Installed: $(BIN)/pgwarden (to type \`pgwarden\`: export PATH=\"$(abspath $(BIN)):\$$PATH\")"
	@touch $@

# PostgreSQL's server and clients, installed with apt-get only when missing (`make test` also
# Debian's Chromium and ChromeDriver, for the web console's browser tests).
deps:
	bash scripts/ensure-deps.sh

test-deps:
	bash scripts/ensure-deps.sh --browser

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench compat
	$(BIN)/ruff format --check proxy tests bench compat

typecheck: $(STAMP)
	$(BIN)/mypy

# Both tiers run on two cores. The pure tier's tests share nothing; the integration and browser
# tiers go file by file (`--dist loadfile`: a module's servers are shared by its tests), each
# worker with a PostgreSQL of its own. Coverage is measured where the gate is: wire and auth.
CORE_COVERAGE := --cov=proxy.wire --cov=proxy.auth --cov-branch --cov-report=

# The hot modules run compiled where `make compile` could build them (proxy/native.py): the pure
# tier runs on the pure-Python modules (and measures coverage), then again on the compiled ones
# (fewer Hypothesis examples: the properties ran in full just before); the servers' tiers run
# compiled, as `make bench` and the container image do.
test: test-deps lint typecheck compile
	rm -f .coverage
	PGWARDEN_PURE=1 PGWARDEN_HYPOTHESIS_PROFILE=default $(BIN)/pytest -n 2 $(CORE_COVERAGE) \
		tests/unit tests/test_architecture.py
	if $(BIN)/python -c 'import sys; from proxy import native; sys.exit(native.mode != "compiled")'; \
	then PGWARDEN_HYPOTHESIS_PROFILE=fast $(BIN)/pytest -n 2 -q tests/unit; \
	else echo "pgwarden: not compiled here: the pure tier ran on pure Python only"; fi
	PGWARDEN_HYPOTHESIS_PROFILE=default $(BIN)/pytest -n 2 --dist loadfile $(CORE_COVERAGE) --cov-append \
		tests/integration tests/browser
	$(BIN)/coverage report --include='proxy/wire/*,proxy/auth/*' --fail-under=$(CORE_COVERAGE_MIN)

# mypyc-compiled hot modules beside their sources (scripts/compile.sh; skipped when up to date, or
# without a C compiler); `make pure` removes them.
compile: $(STAMP)
	bash scripts/compile.sh $(BIN)/python

pure:
	bash scripts/compile.sh --remove

# The quick loop while editing, not a replacement for `make test`. It runs on every core
# (pytest-xdist: each test has its own tmp_path and binds port 0), and each Hypothesis property
# test on a fifth of its examples (PGWARDEN_HYPOTHESIS_PROFILE=fast, tests/fixtures/examples.py):
# once the real waits and the slow CLI start-up were gone, generating examples was most of what
# was left. Bytecode is cached even where the environment says not to (each worker compiles
# proxy/ again otherwise). `make test` (CI) runs them with the full example counts, then the rest.
unit: $(STAMP)
	PYTHONDONTWRITEBYTECODE= PGWARDEN_HYPOTHESIS_PROFILE=fast $(BIN)/pytest -n auto tests/unit tests/test_architecture.py

# A throwaway Postgres + pgwarden + the guided walkthrough; PGWARDEN_DEMO_NONINTERACTIVE=1 exits after it.
demo: deps $(STAMP)
	$(BIN)/python -m proxy demo

# pgwarden against direct Postgres and pgbouncer (bench/README.md); `make bench QUICK=1`: short runs.
bench: $(STAMP) compile
	bash scripts/ensure-deps.sh --pgbouncer
	PATH="$$PATH:/usr/sbin" $(BIN)/python -m bench.run $(if $(filter 1,$(QUICK)),--quick) $(if $(CASES),--cases "$(CASES)")

# asyncpg's, pg8000's and psycopg2's own test suites directly and through pgwarden (compat/README.md);
# not part of `make test`. `make compat SUITES=pg8000`: only these (comma-separated).
compat: deps $(STAMP)
	$(BIN)/python -m compat.run $(if $(SUITES),--suites "$(SUITES)")

# Revocation across three replicas (>= 50 trials) and a state-database outage (bench/ha_trials.py);
# by hand, not part of `make test`: `make ha-trials TRIALS=100 OUTAGE=60`.
ha-trials: deps $(STAMP)
	$(BIN)/python -m bench.ha_trials $(if $(TRIALS),--trials $(TRIALS)) $(if $(OUTAGE),--outage $(OUTAGE)) \
		$(if $(FAILOVERS),--failovers $(FAILOVERS))

clean: pure
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage build
