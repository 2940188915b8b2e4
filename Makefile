# botrix: the two commands a new user starts with are `make run` and `make test`.
# Everything a target needs it installs itself: redis-server from Debian's packages,
# the Python packages into .venv.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint deps redis-server venv clean soak torture

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

# Debian's packages, installed when missing: redis-server (tests and `make run` start their
# own) and prometheus (promtool and a real server for the metrics tests).
redis-server:
	@scripts/install-deps.sh --redis-only

deps:
	@scripts/install-deps.sh

## run: a real worker on a throwaway local Redis with example jobs flowing (Ctrl-C stops it all)
run: venv redis-server
	$(BIN)/python scripts/demo.py

## test: the whole suite against a real redis-server, slow and chaos scenarios included
test: venv deps
	$(BIN)/python -m pytest -q -m '' $(PYTEST_ARGS)

## test-fast: the suite without the slow and chaos scenarios
test-fast: venv deps
	$(BIN)/python -m pytest -q -m 'not slow and not chaos' $(PYTEST_ARGS)

## lint: ruff, mypy --strict, the layering contracts, and the deployment artifacts (mk/ops.mk)
lint: venv
	$(BIN)/ruff check botrix tests scripts
	$(BIN)/ruff format --check botrix tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(MAKE) --no-print-directory lint-ops

clean:
	rm -rf $(VENV) .venv-*/ .mypy_cache .pytest_cache .ruff_cache

-include mk/*.mk

## soak: 100,000 jobs through one worker; RSS and Redis memory must stay flat (docs/reliability.md)
soak: venv redis-server
	PYTHONPATH=. $(BIN)/python scripts/soak.py

## torture: every fault at once, at random, for 10 minutes (tests/test_torture.py, which
## `make test` runs for 20 s); TORTURE_SECONDS=N for another length, TORTURE_SEED=N to replay
torture: venv deps
	BOTRIX_TORTURE_SECONDS=$(or $(TORTURE_SECONDS),600) BOTRIX_TORTURE_SEED=$(TORTURE_SEED) \
		$(BIN)/python -m pytest -q -s -m '' tests/test_torture.py $(PYTEST_ARGS)
