#!/usr/bin/env bash
# `make local-up` / `make local-down`: the stack deployed into ministack beside the TMC
# simulator, kept running for you to poke at with the AWS CLI, `tmc-relay` admin commands or
# `make backfill`-style invocations. `up` prints the environment to use (also written to
# .run/local/env); `down` stops exactly what `up` started (the pids in .run/local/).
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP_SERVICES=1
. infra/localenv.sh

LOCAL_DIR=.run/local

up() {
    if [ -f "$LOCAL_DIR/env" ] && ! kill -0 "$(cat "$LOCAL_DIR/ministack.pid" 2>/dev/null)" 2>/dev/null; then
        log "a previous local stack is gone (ministack no longer runs); starting a new one"
        down
    fi
    if [ -f "$LOCAL_DIR/env" ]; then
        log "a local stack is already up (make local-down stops it):"
        cat "$LOCAL_DIR/env"
        return 0
    fi
    PRELOAD=${PRELOAD:-3000}
    APP_KEY=12345678
    TMC_SIM_APP_SECRET=$("$VENV_PY" -c 'import secrets; print(secrets.token_hex(16))')
    export TMC_SIM_APP_SECRET

    log "building the host binaries (cargo build --bins)"
    cargo build --bins
    rm -rf "$LOCAL_DIR"
    mkdir -p "$LOCAL_DIR"
    RUN_DIR=$LOCAL_DIR
    # Until the stack is up, a failure stops what was started; after, everything stays up.
    trap 'status=$?; [ "$status" -eq 0 ] || { stop_started; log "logs in $LOCAL_DIR"; rm -f "$LOCAL_DIR/env"; }; exit "$status"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    use_dummy_aws
    start_ministack
    start_sim "$APP_KEY" "$PRELOAD"
    STACK=tmc-relay-local
    log "deploying template.yaml into ministack as stack $STACK"
    "$VENV_PY" infra/local.py deploy-local --endpoint "$MINISTACK_ENDPOINT" --stack "$STACK" \
        --app-key "$APP_KEY" --top-endpoint "$SIM_URL" \
        --bootstrap "$TARGET_DIR/debug/bootstrap" >"$LOCAL_DIR/outputs.json"
    output() { "$VENV_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$LOCAL_DIR/outputs.json" "$1"; }
    secret_arn=$("$VENV_PY" - "$MINISTACK_ENDPOINT" <<'PY'
import sys, boto3
sm = boto3.client("secretsmanager", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
print(sm.describe_secret(SecretId="tmc-relay/app-secret")["ARN"])
PY
)
    # No secret in this file: the admin commands read it from ministack's Secrets Manager.
    cat >"$LOCAL_DIR/env" <<ENV
export AWS_ENDPOINT_URL=$MINISTACK_ENDPOINT AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export TOP_ENDPOINT=$SIM_URL TOP_APP_KEY=$APP_KEY TOP_APP_SECRET_ARN=$secret_arn
export STACK=$STACK FUNCTION=$(output FunctionName)
export RELAY_QUEUE_URL=$(output RelayQueueUrl) PARKING_QUEUE_URL=$(output ParkingQueueUrl)
export DEDUP_TABLE_NAME=$(output DedupTableName) LOG_GROUP=$(output LogGroupName)
ENV
    log "the stack's outputs"
    cat "$LOCAL_DIR/outputs.json"
    log "up: ministack at $MINISTACK_ENDPOINT, tmc-sim at $SIM_URL ($PRELOAD messages; the schedule drains them within a minute or two)"
    log "the environment to use (source $LOCAL_DIR/env):"
    cat "$LOCAL_DIR/env"
    cat >&2 <<'HELP'
==> for example:
    . .run/local/env
    .venv/bin/python infra/local.py invoke --endpoint "$AWS_ENDPOINT_URL" --function "$FUNCTION" --payload '{"max_batches":1}'
    aws --endpoint-url "$AWS_ENDPOINT_URL" sqs receive-message --queue-url "$RELAY_QUEUE_URL" --max-number-of-messages 3
    aws --endpoint-url "$AWS_ENDPOINT_URL" cloudformation describe-stacks --stack-name "$STACK"
    target/debug/tmc-relay groups list        # admin commands: the secret comes from ministack
    curl -s "${TOP_ENDPOINT%/router/rest}/_sim/state?messages=false"
    make local-down
HELP
}

down() {
    if [ ! -d "$LOCAL_DIR" ]; then
        log "no local stack is up"
        return 0
    fi
    local pidfile pid
    for pidfile in "$LOCAL_DIR"/*.pid; do
        [ -e "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        # Only the processes local-up started: the pid must still run the program it started.
        if kill -0 "$pid" 2>/dev/null && grep -qE 'ministack|tmc-sim' "/proc/$pid/cmdline" 2>/dev/null; then
            _started_pids+=("$pid")
        fi
    done
    stop_started
    rm -rf "$LOCAL_DIR"
    log "stopped the local stack"
}

case "${1:-}" in
up) up ;;
down) down ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
