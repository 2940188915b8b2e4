# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034 # here, work, tag come from the caller; redis_pid goes back to it
# Shared by scripts/image-test.sh and scripts/image/systemd-test.sh (sourced, not run).
# The caller sets `here` (this directory), `work` (its temp dir) and `tag` (log prefix).

export CONTAINERS_CONF=$here/containers.conf

log() { printf '[%s] %s\n' "${tag:-test}" "$*" >&2; }
fail() {
    log "FAIL: $*"
    exit 1
}
pass() { log "ok: $*"; }

# ensure_tools: root, podman, runc, debootstrap and redis-server, installed when missing.
ensure_tools() {
    [ "$(id -u)" = 0 ] || fail "needs root (rootful podman and debootstrap)"
    local missing=()
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    command -v redis-server >/dev/null 2>&1 || bash "$here/../install-deps.sh" --redis-only
}

# host_ca_bundle: the CA bundle the host's pip trusts (this network re-signs HTTPS).
host_ca_bundle() {
    local ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
    [ -f "$ca" ] || fail "no CA bundle at $ca"
    echo "$ca"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# http URL [BODY_FILE]: print the status code (000 when nothing answers).
http() { python3 "$here/http-get.py" "$@"; }

# wait_status URL STATUS SECONDS: poll until URL answers STATUS; body in $work/body.
wait_status() {
    local deadline=$((SECONDS + $3)) got
    while :; do
        got=$(http "$1" "$work/body")
        [ "$got" = "$2" ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            log "$1 answered $got (wanted $2): $(head -c 400 "$work/body" 2>/dev/null)"
            return 1
        fi
        sleep 0.2
    done
}

# start_redis: a throwaway redis-server on a free loopback port; sets redis_pid, REDIS_URL.
start_redis() {
    local port
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --maxmemory-policy noeviction --dir "$work" >"$work/redis.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 50); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis-cli -p "$port" ping >/dev/null || fail "redis-server did not start"
    export REDIS_URL="redis://127.0.0.1:$port/0"
}

# job_status ID: the job's status as `botrix job` reports it (empty when unknown).
job_status() {
    "$BIN/botrix" job "$1" 2>/dev/null \
        | python3 -c 'import json, sys; print(json.load(sys.stdin).get("status", ""))' 2>/dev/null \
        || true
}

# wait_job_status ID STATUS SECONDS
wait_job_status() {
    local deadline=$((SECONDS + $3))
    until [ "$(job_status "$1")" = "$2" ]; do
        if [ $SECONDS -ge $deadline ]; then
            log "job $1 is not $2: $("$BIN/botrix" job "$1" 2>&1 | tr '\n' ' ' | head -c 400)"
            return 1
        fi
        sleep 0.1
    done
}
