#!/usr/bin/env bash
# make image-test: build the Containerfile for real and check the image it makes.
#
#  1. a base image from Debian's packages (debootstrap + `podman import`; no registry here),
#  2. `podman build --build-arg BASE_IMAGE=<that base>` of the real Containerfile,
#  3. the image's metadata (user 1001, tini entrypoint, STOPSIGNAL, EXPOSE, HEALTHCHECK),
#  4. a container on the host network against a throwaway redis-server: /live, /ready,
#     /health, the image's own HEALTHCHECK, PID 1 is tini, the worker runs as UID 1001,
#  5. a job enqueued from the host (`botrix enqueue example.hello --wait`) completes and
#     /metrics counts it,
#  6. `podman stop` with a slow job in flight: /ready turns 503 at once, the job finishes,
#     the container exits 0 within the grace period.
# Everything it creates (container, images, Redis, temp files) is removed on exit; the
# debootstrapped base archive is cached (BOTRIX_IMAGE_TEST_CACHE, /var/cache/botrix-image-test).
#
# Environment: BIN (host venv bin dir with the `botrix` CLI, default .venv/bin),
# BOTRIX_IMAGE_TEST_KEEP=1 keeps the work dir and image for debugging.
# Podman's machine-specific settings live in scripts/image/ (containers.conf, pip.conf), never
# in the Containerfile.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
here=$root/scripts/image
tag="image-test"
BIN=${BIN:-$root/.venv/bin}
grace=40       # podman stop -t: above BOTRIX_SHUTDOWN_TIMEOUT=25 below, as in the docs
slow_seconds=4 # the job in flight during the stop
keep=${BOTRIX_IMAGE_TEST_KEEP:-0}
run_id="$(date +%s)-$$"
work=$(mktemp -d /tmp/botrix-image-test.XXXXXX)
# shellcheck source=scripts/image/common.sh
. "$here/common.sh"

ensure_tools
[ -x "$BIN/botrix" ] || fail "$BIN/botrix not found: run 'make venv' first"
ca_bundle=$(host_ca_bundle)

base_image=localhost/botrix-image-test-base:$run_id
image=localhost/botrix-image-test:$run_id
container=botrix-image-test-$run_id
redis_pid=""

cleanup() {
    local rc=$?
    set +e
    if [ "$rc" != 0 ] && podman container exists "$container" 2>/dev/null; then
        log "worker log (tail):"
        podman logs "$container" 2>&1 | tail -n 40 >&2
    fi
    podman rm -f -t 0 "$container" >/dev/null 2>&1
    if [ "$keep" = 1 ]; then
        log "kept $work and $image"
        podman rmi -f "$base_image" >/dev/null 2>&1
    else
        podman rmi -f "$image" "$base_image" >/dev/null 2>&1
        rm -rf "$work"
    fi
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    if [ "$rc" = 0 ]; then log "PASSED"; else log "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. base image -------------------------------------------------------------------------
archive=$(bash "$here/build-base.sh")
podman import --quiet "$archive" "$base_image" >/dev/null
pass "base image $base_image from $(basename "$archive")"

# --- 2. build ------------------------------------------------------------------------------
# --format docker: the OCI format has no HEALTHCHECK. The host CA bundle and a pip.conf naming
# it are mounted into every RUN step so pip's HTTPS to PyPI trusts this network's TLS proxy.
build_start=$SECONDS
if ! podman build --format docker --layers=false --pull=never \
    --build-arg "BASE_IMAGE=$base_image" \
    --volume "$ca_bundle:/run/botrix-image-test/ca-certificates.crt:ro" \
    --volume "$here/pip.conf:/etc/pip.conf:ro" \
    --file Containerfile --tag "$image" . >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    fail "podman build"
fi
pass "podman build in $((SECONDS - build_start)) s"

# --- 3. metadata ---------------------------------------------------------------------------
inspect() { podman image inspect --format "$1" "$image"; }
[ "$(inspect '{{.Config.User}}')" = "1001:1001" ] || fail "USER is $(inspect '{{.Config.User}}')"
[ "$(inspect '{{.Config.StopSignal}}')" = "SIGTERM" ] || fail "STOPSIGNAL"
inspect '{{json .Config.ExposedPorts}}' | grep -q '"8080/tcp"' || fail "EXPOSE 8080"
[ "$(inspect '{{json .Config.Entrypoint}}')" = '["tini","--","botrix-worker"]' ] \
    || fail "ENTRYPOINT is $(inspect '{{json .Config.Entrypoint}}')"
inspect '{{json .HealthCheck}}' | grep -q '/live' || fail "HEALTHCHECK on /live"
pass "image: user 1001:1001, tini entrypoint, STOPSIGNAL SIGTERM, EXPOSE 8080, HEALTHCHECK /live"
log "image size: $(inspect '{{.Size}}' | awk '{ printf "%.0f MB", $1 / 1e6 }')"

# --- 4. run against a local Redis ----------------------------------------------------------
start_redis
http_port=$(free_port)
base_url="http://127.0.0.1:$http_port"
# --health-interval=disable: no systemd here to run the timer; the check is run by hand below.
podman run --detach --name "$container" --network host --health-interval=disable \
    --env "REDIS_URL=$REDIS_URL" --env "WORKER_ID=image-test-$run_id" \
    --env BOTRIX_APP=botrix.examples --env BOTRIX_QUEUES=default --env CONCURRENCY=2 \
    --env BOTRIX_HTTP_HOST=127.0.0.1 --env "BOTRIX_HTTP_PORT=$http_port" \
    --env BOTRIX_SHUTDOWN_TIMEOUT=25 \
    "$image" >/dev/null 2>"$work/run.err" || {
    cat "$work/run.err" >&2
    fail "podman run"
}
wait_status "$base_url/live" 200 30 || fail "/live did not answer 200"
pass "/live 200: $(head -c 200 "$work/body")"
wait_status "$base_url/ready" 200 30 || fail "/ready did not answer 200"
pass "/ready 200: $(head -c 200 "$work/body")"
[ "$(http "$base_url/health" "$work/health.json")" = 200 ] || fail "/health not 200"
python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert d["checks"]["redis"], d' \
    "$work/health.json" || fail "/health JSON has no checks.redis"
pass "/health 200 with checks.redis"

[ "$(podman exec "$container" cat /proc/1/comm)" = tini ] || fail "PID 1 is not tini"
# shellcheck disable=SC2016 # expanded inside the container
worker_uid=$(podman exec "$container" sh -c \
    'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = botrix-worker ] && awk "/^Uid:/ { print \$2 }" $p/status; done' \
    | head -n 1)
[ "$worker_uid" = 1001 ] || fail "botrix-worker runs as uid '$worker_uid'"
pass "PID 1 is tini, botrix-worker runs as uid 1001"
podman exec "$container" python -c 'from botrix.cron import Cron; Cron("0 2 * * *", "Europe/Berlin")' \
    || fail "a cron handler's tz= finds no time zone database in the image"
pass "cron handlers' time zones: Europe/Berlin found"

health=$(podman healthcheck run "$container" 2>&1) || fail "image HEALTHCHECK: $health"
pass "image HEALTHCHECK: ${health:-healthy}"

# --- 5. a job from the host completes ------------------------------------------------------
if ! timeout 60 "$BIN/botrix" enqueue example.hello --payload '{}' --wait >"$work/hello.out" 2>&1; then
    cat "$work/hello.out" >&2
    fail "example.hello did not complete"
fi
pass "example.hello completed: $(tr -s ' \n' ' ' <"$work/hello.out" | head -c 300)"

[ "$(http "$base_url/metrics" "$work/metrics.txt")" = 200 ] || fail "/metrics not 200"
grep -E '^botrix_jobs_total\{.*type="example.hello".*\} [1-9]' "$work/metrics.txt" >/dev/null \
    || fail "/metrics has no botrix_jobs_total for example.hello"
pass "/metrics counts it: $(grep -E '^botrix_jobs_total\{.*example.hello' "$work/metrics.txt" | head -n 1)"
# Every botrix metric the alert rules and docs/operations.md use is exported.
missing_metrics=""
while read -r name; do
    grep -qE "^# TYPE $name " "$work/metrics.txt" || missing_metrics="$missing_metrics $name"
done < <(grep -ohE 'botrix_[a-z_]+' deploy/prometheus/alerts.yml docs/operations.md \
    | sed -E 's/_(bucket|count|sum)$//' | sort -u)
[ -z "$missing_metrics" ] || fail "metrics used by alerts/docs but not exported:$missing_metrics"
pass "every botrix_* metric named in alerts.yml and docs/operations.md is exported"

# --- 6. graceful stop with a job in flight -------------------------------------------------
slow_id="image-test-slow-$run_id"
timeout 20 "$BIN/botrix" enqueue example.slow --payload "{\"seconds\": $slow_seconds}" \
    --job-id "$slow_id" >"$work/slow.out" 2>&1 || {
    cat "$work/slow.out" >&2
    fail "could not enqueue example.slow"
}
wait_job_status "$slow_id" running 15 || fail "example.slow never started"
pass "example.slow $slow_id running"

stop_start=$(date +%s.%N)
podman stop --time "$grace" "$container" >"$work/stop.out" 2>&1 &
stop_pid=$!
wait_status "$base_url/ready" 503 5 || fail "/ready did not turn 503 while draining"
pass "/ready 503 while draining: $(head -c 200 "$work/body")"
wait "$stop_pid" || fail "podman stop: $(cat "$work/stop.out")"
stop_seconds=$(python3 -c "import time; print(round(time.time() - $stop_start, 1))")
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
[ "$exit_code" = 0 ] || fail "container exited $exit_code after podman stop"
python3 -c "import sys; sys.exit(0 if $stop_seconds < $grace else 1)" \
    || fail "stop took ${stop_seconds}s, not under the ${grace}s grace period"
pass "podman stop: exit 0 after ${stop_seconds}s (grace ${grace}s)"

[ "$(job_status "$slow_id")" = completed ] \
    || fail "example.slow not settled as completed: $("$BIN/botrix" job "$slow_id" 2>&1)"
pass "example.slow $slow_id settled: completed"
podman logs "$container" >"$work/worker.log" 2>&1
log "worker log: $(wc -l <"$work/worker.log") lines, last: $(tail -n 1 "$work/worker.log" | head -c 300)"
