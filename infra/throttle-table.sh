#!/usr/bin/env bash
# `make throttle-table`: issue 19's figures (docs/performance.md, "Throttled DynamoDB writes"). Runs the cases
# of tests/throttle.rs one after another against a ministack started here: DynamoDB writes
# throttled for a whole pass at each rate of THROTTLE_RATES (0.5 0.7 0.9), then the outage.
# Prints a Markdown table; exits non-zero when a case failed its checks (its figures are
# still in the table). THROTTLE_MESSAGES changes the size (2,000).
set -uo pipefail
cd "$(dirname "$0")/.."
. infra/localenv.sh

main() {
    new_run_dir throttle
    trap 'status=$?; finish "$status"; exit "$status"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    use_dummy_aws
    start_ministack || exit 1
    cargo test --no-run --test throttle || exit 1
    local figures="$PWD/$RUN_DIR/figures.jsonl" failed=0 p started
    : >"$figures"
    for p in ${THROTTLE_RATES:-0.5 0.7 0.9}; do
        log "DynamoDB writes throttled at p = $p for the first pass"
        started=$SECONDS
        THROTTLE_P=$p THROTTLE_FIGURES=$figures cargo test -q --test throttle -- --exact \
            throttled_dynamodb_writes_cost_time_not_copies --nocapture || failed=1
        log "p = $p: $((SECONDS - started)) s"
    done
    log "a DynamoDB outage from mid-pass to past its end"
    started=$SECONDS
    THROTTLE_FIGURES=$figures cargo test -q --test throttle -- --exact \
        a_dynamodb_outage_longer_than_the_pass_loses_nothing_and_counts_its_copies \
        --nocapture || failed=1
    log "outage: $((SECONDS - started)) s"

    log "table ($(date -u +%Y-%m-%d), $(nproc) cores)"
    "$VENV_PY" - "$figures" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def n(v):
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)
print("| Case | Messages | First pass | `unsettled` | `lease_lost` | Copies in SQS | Later passes |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    case = r["case"].replace("p=", "p = ")
    if r["case"] == "outage":
        case += f" ({n(r['in_flight_at_outage'])} ids in flight)"
    print(f"| {case} | {n(r['messages'])} | {r['first_pass_s']} s | {n(r['unsettled'])} "
          f"| {n(r['lease_lost'])} | {n(r['copies'])} | {r['later_passes']} ({r['later_s']} s) |")
PY
    exit "$failed"
}

main "$@"
