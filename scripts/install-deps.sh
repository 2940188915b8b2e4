#!/usr/bin/env bash
# Installs the Debian packages the tests and `make run` use when any is missing:
# redis-server (tests start their own throwaway servers) and prometheus (promtool, and a real
# Prometheus server that the tests point at a worker). Services the packages may start are
# not used.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ "${1:-}" != "--redis-only" ]; then
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
fi
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
echo "installing ${need[*]} from Debian's packages" >&2
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
