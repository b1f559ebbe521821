#!/usr/bin/env bash
# `make demo`: one relay pass on this machine. Starts moto and the TMC simulator on 127.0.0.1,
# creates the queues and table as template.yaml does, runs `tmc-relay run` against them, shows
# the report, a few relayed messages and the simulator's state, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. infra/localenv.sh

main() {
    cargo build --bins

    PRELOAD=${DEMO_PRELOAD:-3000}
    MAX_SECONDS=${DEMO_MAX_SECONDS:-600}
    # The demo's own app credentials, known only to the simulator and the relay started here.
    DEMO_APP_KEY=12345678
    export TMC_SIM_APP_SECRET=demo-secret-for-the-local-simulator

    new_run_dir demo
    trap 'status=$?; finish "$status"; exit "$status"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    use_dummy_aws
    start_moto
    start_sim "$DEMO_APP_KEY" "$PRELOAD"

    log "creating the relay queue, parking queue and dedup table in moto"
    eval "$("$VENV_PY" infra/local.py create --endpoint "$MOTO_ENDPOINT" --prefix demo)"
    printf '    %s\n' "RELAY_QUEUE_URL=$RELAY_QUEUE_URL" "PARKING_QUEUE_URL=$PARKING_QUEUE_URL" \
        "DEDUP_TABLE_NAME=$DEDUP_TABLE_NAME" >&2

    log "tmc-relay run (draining $PRELOAD messages; logs below, report after)"
    started=$(date +%s)
    (
        # Exported, not passed on a command line, so the secret never shows in `ps`.
        export TOP_APP_KEY="$DEMO_APP_KEY" TOP_APP_SECRET="$TMC_SIM_APP_SECRET" TOP_ENDPOINT="$SIM_URL"
        export AWS_ENDPOINT_URL="$MOTO_ENDPOINT" RUST_LOG="${RUST_LOG:-info}"
        # moto serves one request at a time and slows with queue depth (about 1 s per
        # SendMessageBatch at 3,000 deep): requests queued behind each other would outlast
        # their 5 s timeout. So the demo keeps few in flight; AWS takes the defaults (32, 4).
        export RELAY_PARALLELISM="${RELAY_PARALLELISM:-2}"
        exec "$TARGET_DIR/debug/tmc-relay" run --max-seconds "$MAX_SECONDS" \
            --pipeline-depth "${DEMO_PIPELINE_DEPTH:-1}"
    ) >"$RUN_DIR/report.json" || status=$?
    log "report ($(($(date +%s) - started)) s)"
    cat "$RUN_DIR/report.json"
    if [ "${status:-0}" -ne 0 ]; then
        log "tmc-relay run failed (exit $status): its error is above"
        return "$status"
    fi

    log "a few messages read back from the relay queue"
    "$VENV_PY" infra/local.py peek --endpoint "$MOTO_ENDPOINT" --queue-url "$RELAY_QUEUE_URL" --n 3

    log "the parking queue"
    "$VENV_PY" infra/local.py peek --endpoint "$MOTO_ENDPOINT" --queue-url "$PARKING_QUEUE_URL" --n 1

    log "the simulator's state"
    "$VENV_PY" infra/local.py sim-state --url "$SIM_URL"
}

main "$@"
