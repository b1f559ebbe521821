#!/usr/bin/env bash
# `make demo`: the deployed product at work, on this machine. Builds the host `bootstrap`,
# starts ministack (a local AWS) and the TMC simulator on 127.0.0.1, deploys template.yaml
# itself into ministack with the template's default parameters, invokes the function once with
# a backfill payload, lets the stack's own schedule drain the rest, shows what happened (the
# reports, the queues, a query of the archive, a replay from it into a fresh queue), and stops
# everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. infra/localenv.sh

main() {
    PRELOAD=${DEMO_PRELOAD:-3000}
    BACKFILL=${DEMO_BACKFILL:-1000}
    # The demo's own app credentials, known only to the simulator and the deployed stack.
    DEMO_APP_KEY=12345678
    TMC_SIM_APP_SECRET=$("$VENV_PY" -c 'import secrets; print(secrets.token_hex(16))')
    export TMC_SIM_APP_SECRET
    demo_started=$(date +%s)

    log "building the host binaries (cargo build --bins; the first build takes a few minutes)"
    cargo build --bins

    new_run_dir demo
    trap 'status=$?; finish "$status"; exit "$status"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    use_dummy_aws
    start_ministack
    start_sim "$DEMO_APP_KEY" "$PRELOAD"

    STACK=tmc-relay-demo
    log "deploying template.yaml into ministack as stack $STACK (default parameters; AppKey, AppSecretArn and TopEndpoint point at the simulator)"
    # The secret travels in the environment (TMC_SIM_APP_SECRET), never on a command line.
    "$VENV_PY" infra/local.py deploy-local --endpoint "$MINISTACK_ENDPOINT" --stack "$STACK" \
        --app-key "$DEMO_APP_KEY" --top-endpoint "$SIM_URL" \
        --bootstrap "$TARGET_DIR/debug/bootstrap" >"$RUN_DIR/outputs.json"
    deployed=$(date +%s)
    log "the stack's outputs"
    cat "$RUN_DIR/outputs.json"
    output() { "$VENV_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$RUN_DIR/outputs.json" "$1"; }
    FUNCTION=$(output FunctionName)
    RELAY_QUEUE_URL=$(output RelayQueueUrl)
    PARKING_QUEUE_URL=$(output ParkingQueueUrl)
    LOG_GROUP=$(output LogGroupName)
    ARCHIVE_URL=$(output ArchiveUrl)

    payload="{\"max_messages\": $BACKFILL}"
    log "invoking $FUNCTION with the backfill payload $payload (its report)"
    started=$(date +%s)
    "$VENV_PY" infra/local.py invoke --endpoint "$MINISTACK_ENDPOINT" --function "$FUNCTION" \
        --payload "$payload"
    log "the backfill took $(($(date +%s) - started)) s"

    log "waiting for the stack's schedule (rate(1 minute), first tick a minute after the deploy) to drain the rest"
    "$VENV_PY" infra/local.py wait-drained --sim-url "$SIM_URL" --timeout 300
    log "drained $(($(date +%s) - deployed)) s after the deploy; every pass the function logged:"
    "$VENV_PY" infra/local.py pass-reports --endpoint "$MINISTACK_ENDPOINT" --log-group "$LOG_GROUP"

    log "a few messages read back from the relay queue"
    "$VENV_PY" infra/local.py peek --endpoint "$MINISTACK_ENDPOINT" --queue-url "$RELAY_QUEUE_URL" --n 3

    log "the parking queue"
    "$VENV_PY" infra/local.py peek --endpoint "$MINISTACK_ENDPOINT" --queue-url "$PARKING_QUEUE_URL" --n 1

    log "the archive ($ARCHIVE_URL), read with DuckDB through the Athena table's columns (docs/operating.md, \"The archive\")"
    "$VENV_PY" infra/local.py archive-query --endpoint "$MINISTACK_ENDPOINT" \
        --archive-url "$ARCHIVE_URL" --into "$RUN_DIR/archive"

    log "a consumer lost them all? replaying the last hour from the archive into a fresh queue (tmc-relay replay)"
    replayed=$("$VENV_PY" infra/local.py create-queue --endpoint "$MINISTACK_ENDPOINT" --name replayed-demo)
    since=$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)
    until=$(date -u -d '+1 minute' +%Y-%m-%dT%H:%M:%SZ)
    AWS_ENDPOINT_URL="$MINISTACK_ENDPOINT" "$TARGET_DIR/debug/tmc-relay" replay \
        --archive-url "$ARCHIVE_URL" --queue-url "$replayed" --since "$since" --until "$until" --rate 3000
    "$VENV_PY" infra/local.py peek --endpoint "$MINISTACK_ENDPOINT" --queue-url "$replayed" --n 1

    log "the simulator's state"
    "$VENV_PY" infra/local.py sim-state --url "$SIM_URL"
    log "done in $(($(date +%s) - demo_started)) s; stopping ministack and the simulator"
}

main "$@"
