# Shared by infra/test.sh and infra/demo.sh (sourced, not run): start local services on
# 127.0.0.1 and stop exactly those again, whatever happens.
#
# The scripts that source this keep their steps in a function called at the end, so bash has
# read all of it before starting: editing a script while it runs cannot derail it.
#
# Each run gets its own directory under .run/ (ports, pids, logs), so two runs in one checkout
# do not collide. It is removed when the run succeeds and kept, with its logs, when it fails.

VENV_PY=${VENV_PY:-.venv/bin/python}
MINISTACK_PY=${MINISTACK_PY:-.venv-ministack/bin/python}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
# KEEP_SERVICES=1 (make local-up): no watchdogs, so the services outlive this script.
KEEP_SERVICES=${KEEP_SERVICES:-0}

_started_pids=()
_watchdog_pids=()

# new_run_dir NAME: creates .run/NAME.XXXXXX and sets RUN_DIR.
new_run_dir() {
    mkdir -p .run
    RUN_DIR=$(mktemp -d ".run/$1.XXXXXX")
}

log() { printf '==> %s\n' "$*" >&2; }

# Local runs talk to moto with dummy credentials: never to a real account by accident.
use_dummy_aws() {
    unset AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_PROFILE
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
    export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
    export AWS_EC2_METADATA_DISABLED=true
}

# watch PID: stops PID even if this script dies without running its traps (e.g. SIGKILL).
watch() {
    [ "$KEEP_SERVICES" = 1 ] && return 0
    local pid=$1 parent=$$
    (
        trap - EXIT INT TERM
        while kill -0 "$parent" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done
        kill -TERM "$pid" 2>/dev/null
    ) </dev/null >/dev/null 2>&1 &
    _watchdog_pids+=("$!")
}

# wait_for_file FILE PID WHAT: waits until FILE has a complete first line, while PID lives.
wait_for_file() {
    local file=$1 pid=$2 what=$3 i
    for i in $(seq 1 600); do
        if [ -s "$file" ] && [ "$(wc -l <"$file")" -ge 1 ]; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$what exited before it was ready; its log:"
            tail -n 30 "$RUN_DIR/$what.log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    log "$what was not ready within 60 s; its log is $RUN_DIR/$what.log"
    return 1
}

# start_moto: starts moto on 127.0.0.1 and a free port; exports MOTO_ENDPOINT.
start_moto() {
    # start_moto [NAME VAR]: a moto named NAME (default moto), its URL exported as VAR
    # (default MOTO_ENDPOINT).
    local name=${1:-moto} var=${2:-MOTO_ENDPOINT} url
    "$VENV_PY" infra/local.py moto --host 127.0.0.1 --port-file "$RUN_DIR/$name.port" \
        >"$RUN_DIR/$name.log" 2>&1 &
    local pid=$!
    _started_pids+=("$pid")
    watch "$pid"
    echo "$pid" >"$RUN_DIR/$name.pid"
    wait_for_file "$RUN_DIR/$name.port" "$pid" "$name" || return 1
    url="http://127.0.0.1:$(head -n1 "$RUN_DIR/$name.port")"
    export "$var=$url"
    "$VENV_PY" infra/local.py wait-http "$url/moto-api/" --timeout 30 || return 1
    log "$name is up at $url (pid $pid)"
}

# start_ministack: starts ministack (the local AWS that template.yaml is deployed into) on
# 127.0.0.1 and a free port; exports MINISTACK_ENDPOINT.
#
# It runs with an environment of its own (env -i): ministack passes its whole environment to
# the Lambda functions it runs, and a deployed function must see only what Lambda would give
# it, never this shell's TOP_* or AWS_* settings. AWS_ENDPOINT_URL is ministack's own address,
# which it hands to every function it runs, so the template needs no local-only setting. The
# functions' unpacked code goes to TMPDIR, inside the run directory.
start_ministack() {
    local port
    port=$("$VENV_PY" infra/local.py free-port) || return 1
    mkdir -p "$RUN_DIR/ministack-tmp"
    env -i PATH="/usr/local/bin:/usr/bin:/bin" HOME="$PWD/$RUN_DIR/ministack-tmp" \
        TMPDIR="$PWD/$RUN_DIR/ministack-tmp" LANG=C.UTF-8 \
        BIND_HOST=127.0.0.1 GATEWAY_PORT="$port" MINISTACK_HOST=127.0.0.1 \
        AWS_ENDPOINT_URL="http://127.0.0.1:$port" \
        AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 \
        "$MINISTACK_PY" -m ministack >"$RUN_DIR/ministack.log" 2>&1 &
    local pid=$!
    _started_pids+=("$pid")
    watch "$pid"
    echo "$pid" >"$RUN_DIR/ministack.pid"
    MINISTACK_ENDPOINT="http://127.0.0.1:$port"
    export MINISTACK_ENDPOINT
    if ! "$VENV_PY" infra/local.py wait-http "$MINISTACK_ENDPOINT/_ministack/health" --timeout 60; then
        log "ministack did not start; its log:"
        tail -n 30 "$RUN_DIR/ministack.log" >&2 || true
        return 1
    fi
    log "ministack is up at $MINISTACK_ENDPOINT (pid $pid)"
}

# start_sim APP_KEY PRELOAD: starts tmc-sim on 127.0.0.1:0; the secret comes from
# TMC_SIM_APP_SECRET in the environment (never argv). Sets SIM_URL to the gateway URL it prints.
start_sim() {
    local app_key=$1 preload=$2
    "$TARGET_DIR/debug/tmc-sim" --listen 127.0.0.1:0 --app-key "$app_key" --preload "$preload" \
        >"$RUN_DIR/tmc-sim.out" 2>"$RUN_DIR/tmc-sim.log" &
    local pid=$!
    _started_pids+=("$pid")
    watch "$pid"
    echo "$pid" >"$RUN_DIR/tmc-sim.pid"
    wait_for_file "$RUN_DIR/tmc-sim.out" "$pid" tmc-sim || return 1
    SIM_URL=$(head -n1 "$RUN_DIR/tmc-sim.out")
    log "tmc-sim is up at $SIM_URL (pid $pid, $preload messages preloaded)"
}

# stop_started: SIGTERM to everything this script started, SIGKILL to what is left after 5 s.
stop_started() {
    local pid i
    for pid in "${_watchdog_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    _watchdog_pids=()
    [ "${#_started_pids[@]}" -gt 0 ] || return 0
    for pid in "${_started_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for i in $(seq 1 50); do
        local alive=0
        for pid in "${_started_pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        [ "$alive" = 1 ] || break
        sleep 0.1
    done
    for pid in "${_started_pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    _started_pids=()
_watchdog_pids=()
}

# finish STATUS: stops services; removes RUN_DIR on success, keeps it (and says so) on failure.
finish() {
    local status=$1
    stop_started
    if [ -n "${RUN_DIR:-}" ] && [ -d "$RUN_DIR" ]; then
        if [ "$status" -eq 0 ]; then
            rm -rf "$RUN_DIR"
        else
            log "logs kept in $RUN_DIR"
        fi
    fi
}
