#!/usr/bin/env bash
# make systemd-test: run systemd/botrix-worker@.service under a real systemd, as shipped.
#
# These machines have no systemd as PID 1, so systemd runs as PID 1 of a privileged podman
# container made from Debian's packages (debootstrap + systemd), on the host network. Inside,
# botrix is installed to /opt/botrix/venv as docs/operations.md says, the unit and
# worker.env.example go to their documented places, and:
#  1. `systemctl start botrix-worker@1 botrix-worker@2` returns (Type=notify: READY=1 came),
#     each instance is active with a STATUS= line, its own WORKER_ID (<host>-<i>) and port,
#     and all the unit's hardening in force (DynamicUser, ProtectSystem=strict, syscall filter),
#  2. /live and /ready answer 200 on both instances' ports; a job completes,
#  3. watchdog pings arrive (a drop-in shortens WatchdogSec to 4 s so it shows quickly),
#  4. a handler that blocks the event loop stops the pings: systemd kills and restarts the
#     instance (NRestarts goes up), the job is recovered from the lost lease,
#  5. `systemctl stop` with a slow job in flight: the job finishes, the unit stops with
#     Result=success and exit status 0 before TimeoutStopSec.
# Needs root. Everything it creates is removed on exit; the base archive is cached.
set -euo pipefail

cd "$(dirname "$0")/../.."
root=$PWD
here=$root/scripts/image
tag="systemd-test"
BIN=${BIN:-$root/.venv/bin}
run_id="$(date +%s)-$$"
work=$(mktemp -d /tmp/botrix-systemd-test.XXXXXX)
# shellcheck source=scripts/image/common.sh
. "$here/common.sh"

ensure_tools
[ -x "$BIN/botrix" ] || fail "$BIN/botrix not found: run 'make venv' first"
ca_bundle=$(host_ca_bundle)

base_image=localhost/botrix-systemd-test:$run_id
container=botrix-systemd-test-$run_id
redis_pid=""

cleanup() {
    local rc=$?
    set +e
    if [ "$rc" != 0 ] && podman container exists "$container" 2>/dev/null; then
        log "journal of botrix-worker@* (tail):"
        podman exec "$container" journalctl -u 'botrix-worker@*' --no-pager 2>&1 | tail -n 40 >&2
    fi
    podman rm -f -t 0 "$container" >/dev/null 2>&1
    podman rmi -f "$base_image" >/dev/null 2>&1
    rm -rf "$work"
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    if [ "$rc" = 0 ]; then log "PASSED"; else log "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ctr() { podman exec "$container" "$@"; }
show() { in_ctr systemctl show --value -p "$2" "$1"; }

# --- a systemd machine ---------------------------------------------------------------------
archive=$(BOTRIX_BASE_EXTRA=systemd,systemd-sysv bash "$here/build-base.sh")
podman import --quiet --change 'CMD ["/sbin/init"]' "$archive" "$base_image" >/dev/null
podman run --detach --name "$container" --privileged --systemd=always --network host \
    "$base_image" /sbin/init >/dev/null 2>"$work/run.err" || {
    cat "$work/run.err" >&2
    fail "podman run systemd"
}
deadline=$((SECONDS + 30))
until state=$(in_ctr systemctl is-system-running 2>/dev/null) \
    || [ "$state" = degraded ]; do
    [ $SECONDS -ge $deadline ] && fail "systemd did not boot: $state"
    sleep 0.5
done
host=$(in_ctr hostname)
pass "systemd $(in_ctr systemctl --version | head -n 1 | cut -d' ' -f2) is PID 1 ($state)"

# --- install as docs/operations.md says ----------------------------------------------------
tar --exclude=.venv --exclude=.git --exclude=__pycache__ --exclude='*.egg-info' \
    --exclude=build --exclude=dist -cf "$work/src.tar" .
podman cp "$work/src.tar" "$container:/tmp/botrix-src.tar"
podman cp "$ca_bundle" "$container:/tmp/host-ca.crt"
in_ctr env PIP_CERT=/tmp/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 sh -euc '
    mkdir -p /tmp/botrix-src && tar -C /tmp/botrix-src -xf /tmp/botrix-src.tar
    python3 -m venv /opt/botrix/venv
    /opt/botrix/venv/bin/pip install -q /tmp/botrix-src
    rm -rf /tmp/botrix-src /tmp/botrix-src.tar /tmp/host-ca.crt
' >"$work/install.log" 2>&1 || {
    tail -n 30 "$work/install.log" >&2
    fail "pip install into /opt/botrix/venv"
}
pass "botrix installed into /opt/botrix/venv"

start_redis
port1=$(free_port)
port2=$(free_port)
podman cp systemd/botrix-worker@.service "$container:/etc/systemd/system/botrix-worker@.service"
in_ctr mkdir -p /etc/botrix /etc/systemd/system/botrix-worker@.service.d \
    /opt/botrix/testapp
sed -e "s|^REDIS_URL=.*|REDIS_URL=$REDIS_URL|" -e 's|^BOTRIX_HTTP_HOST=.*|BOTRIX_HTTP_HOST=127.0.0.1|' \
    -e 's|^BOTRIX_APP=.*|BOTRIX_APP=botrix.examples,blocker|' \
    systemd/worker.env.example >"$work/worker.env"
# Per-instance files: free ports instead of 8081/8082, which may be taken on this host, and
# the test's blocking handler on the import path.
printf 'BOTRIX_HTTP_PORT=%s\nPYTHONPATH=/opt/botrix/testapp\n' "$port1" >"$work/worker-1.env"
printf 'BOTRIX_HTTP_PORT=%s\nPYTHONPATH=/opt/botrix/testapp\n' "$port2" >"$work/worker-2.env"
# A drop-in, as an operator would write one: a short watchdog so pings show within seconds.
printf '[Service]\nWatchdogSec=4s\n' >"$work/test.conf"
cat >"$work/blocker.py" <<'EOF'
"""A handler that blocks the event loop, to show the systemd watchdog at work."""

import time
from typing import Any

from botrix import JobContext, handler


@handler("test.block_loop")
async def block_loop(ctx: JobContext, payload: Any) -> None:
    """Block the whole event loop (the bug the watchdog exists for)."""
    time.sleep(float(payload.get("seconds", 12)))
EOF
podman cp "$work/worker.env" "$container:/etc/botrix/worker.env"
podman cp "$work/worker-1.env" "$container:/etc/botrix/worker-1.env"
podman cp "$work/worker-2.env" "$container:/etc/botrix/worker-2.env"
podman cp "$work/test.conf" "$container:/etc/systemd/system/botrix-worker@.service.d/test.conf"
podman cp "$work/blocker.py" "$container:/opt/botrix/testapp/blocker.py"
in_ctr chmod 0640 /etc/botrix/worker.env
in_ctr chmod -R a+rX /opt/botrix/testapp
in_ctr systemctl daemon-reload

# --- 1. start: READY=1 --------------------------------------------------------------------
start_at=$SECONDS
timeout 90 podman exec "$container" systemctl start botrix-worker@1 botrix-worker@2 \
    || fail "systemctl start did not succeed (no READY=1 within TimeoutStartSec?)"
pass "systemctl start returned after $((SECONDS - start_at)) s (Type=notify, READY=1 received)"
for i in 1 2; do
    unit=botrix-worker@$i
    [ "$(show "$unit" ActiveState)/$(show "$unit" SubState)" = active/running ] \
        || fail "$unit is $(show "$unit" ActiveState)/$(show "$unit" SubState)"
    status_text=$(show "$unit" StatusText)
    [ -n "$status_text" ] || fail "$unit has no STATUS= text"
    env_line=$(show "$unit" Environment)
    case "$env_line" in *"WORKER_ID=$host-$i"*"BOTRIX_HTTP_PORT=808$i"*) ;;
    *) fail "$unit Environment lacks WORKER_ID=$host-$i / BOTRIX_HTTP_PORT=808$i: $env_line" ;; esac
    # shellcheck disable=SC2016 # awk's own $2
    uid=$(in_ctr awk '/^Uid:/ { print $2 }' "/proc/$(show "$unit" MainPID)/status")
    [ "$uid" -ge 61184 ] || fail "$unit runs as uid $uid, not a DynamicUser uid"
    pass "$unit active/running, uid $uid (DynamicUser), STATUS=\"$status_text\""
done
"$BIN/botrix" workers >"$work/workers.json"
for i in 1 2; do
    grep -q "\"$host-$i\"" "$work/workers.json" || fail "botrix workers lacks $host-$i"
done
pass "botrix workers lists $host-1 and $host-2"

# --- 2. probes and a job -------------------------------------------------------------------
for port in "$port1" "$port2"; do
    wait_status "http://127.0.0.1:$port/live" 200 10 || fail "/live on $port"
    wait_status "http://127.0.0.1:$port/ready" 200 10 || fail "/ready on $port"
done
pass "/live and /ready 200 on ports $port1 and $port2 (per-instance env files)"
timeout 30 "$BIN/botrix" enqueue example.hello --payload '{"name": "systemd"}' --wait \
    >"$work/hello.out" 2>&1 || {
    cat "$work/hello.out" >&2
    fail "example.hello did not complete"
}
pass "example.hello completed under the hardened unit"

# --- 3. watchdog pings ---------------------------------------------------------------------
[ "$(show botrix-worker@1 WatchdogUSec)" = 4s ] || fail "WatchdogUSec is $(show botrix-worker@1 WatchdogUSec)"
first=$(show botrix-worker@1 WatchdogTimestampMonotonic)
sleep 3
second=$(show botrix-worker@1 WatchdogTimestampMonotonic)
if [ "$first" = 0 ] || [ "$second" -le "$first" ]; then
    fail "no WATCHDOG=1 pings (WatchdogTimestampMonotonic $first -> $second)"
fi
pass "watchdog pings arrive (WatchdogSec=4s drop-in)"

# --- 4. a blocked loop gets the instance restarted -----------------------------------------
in_ctr systemctl stop botrix-worker@2 # so instance 1 takes the job
restarts_before=$(show botrix-worker@1 NRestarts)
block_id="systemd-test-block-$run_id"
"$BIN/botrix" enqueue test.block_loop --payload '{"seconds": 12}' --max-retries 0 \
    --job-id "$block_id" >/dev/null
deadline=$((SECONDS + 30))
until [ "$(show botrix-worker@1 NRestarts)" -gt "$restarts_before" ]; do
    [ $SECONDS -ge $deadline ] && fail "blocked loop did not trip the watchdog"
    sleep 0.5
done
in_ctr journalctl -u botrix-worker@1 --no-pager | grep -q 'Watchdog timeout' \
    || fail "restart was not for the watchdog"
pass "blocked event loop: watchdog timeout, botrix-worker@1 restarted (NRestarts $(show botrix-worker@1 NRestarts))"
deadline=$((SECONDS + 30))
until [ "$(show botrix-worker@1 ActiveState)" = active ]; do
    [ $SECONDS -ge $deadline ] && fail "botrix-worker@1 did not come back"
    sleep 0.5
done
wait_status "http://127.0.0.1:$port1/ready" 200 20 || fail "/ready after the restart"
pass "botrix-worker@1 back: active, /ready 200"
# The killed job's lease is recovered (and, with no retries left, dead-lettered with a reason).
wait_job_status "$block_id" dead 90 || fail "blocked job not recovered"
pass "job of the killed worker recovered from its lease: dead (no retries left)"
in_ctr systemctl start botrix-worker@2

# --- 5. graceful stop with a job in flight -------------------------------------------------
slow_id="systemd-test-slow-$run_id"
"$BIN/botrix" enqueue example.slow --payload '{"seconds": 4}' --job-id "$slow_id" >/dev/null
wait_job_status "$slow_id" running 15 || fail "example.slow never started"
stop_at=$(date +%s.%N)
in_ctr systemctl stop botrix-worker@1 botrix-worker@2
stop_seconds=$(python3 -c "import time; print(round(time.time() - $stop_at, 1))")
for i in 1 2; do
    unit=botrix-worker@$i
    result="$(show "$unit" Result)/$(show "$unit" ExecMainStatus)"
    [ "$result" = success/0 ] || fail "$unit stopped with Result/ExecMainStatus $result"
done
[ "$(job_status "$slow_id")" = completed ] || fail "example.slow not completed after the stop"
pass "systemctl stop in ${stop_seconds}s: Result=success, exit 0, in-flight job completed"
