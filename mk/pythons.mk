# The newer Pythons botrix supports, tested for real: `make test` runs on the machine's python3
# (3.11, the oldest supported), and `make test-pythons` runs the suite without its slow and
# chaos scenarios on each newer Python this machine has (pyenv's or on PATH), in a virtualenv of
# its own, .venv-<version>. A version the machine lacks is reported as skipped, not failed.
# Included by the Makefile; `.ci/run` runs it after `make test-redis62`.

NEWER_PYTHONS := 3.12 3.13

.PHONY: test-pythons

# The interpreter of a version: pyenv's newest build of it, else pythonX.Y on PATH.
python_for = $(or $(shell ls -d $(HOME)/.pyenv/versions/$(1).*/bin/python$(1) 2>/dev/null | sort -V | tail -1),$(shell command -v python$(1) 2>/dev/null))

.venv-%/.installed: pyproject.toml
	$(call python_for,$*) -m venv .venv-$*
	.venv-$*/bin/pip install -q --upgrade pip
	.venv-$*/bin/pip install -q -e '.[dev]'
	touch $@

## test-pythons: the suite (not slow, not chaos) on Python 3.12 and 3.13, where the machine has them
test-pythons: $(addprefix test-python-,$(NEWER_PYTHONS))

test-python-%: deps
	@if [ -z '$(call python_for,$*)' ]; then echo "test-pythons: Python $* skipped: not on this machine"; exit 0; fi; \
	echo "test-pythons: Python $* ($(call python_for,$*))"; \
	$(MAKE) --no-print-directory .venv-$*/.installed && \
	.venv-$*/bin/python -m pytest -q -m 'not slow and not chaos' $(PYTEST_ARGS)
