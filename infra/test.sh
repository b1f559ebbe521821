#!/usr/bin/env bash
# `make test`: the template checks, then every Rust test against a moto started here.
# Runs everything even when something fails, stops moto whatever happens, and exits non-zero
# when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
. infra/localenv.sh

main() {
    new_run_dir test
    trap 'status=$?; finish "$status"; exit "$status"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    results=()
    failed=0
    step() {
        local name=$1
        shift
        log "$name"
        if "$@"; then
            results+=("ok      $name")
        else
            results+=("FAILED  $name")
            failed=1
        fi
    }

    step "cfn-lint template.yaml" .venv/bin/cfn-lint template.yaml
    step "pytest infra/tests" .venv/bin/python -m pytest -q -p no:cacheprovider infra/tests

    use_dummy_aws
    if start_moto; then
        if cargo nextest --version >/dev/null 2>&1; then
            step "cargo nextest run --workspace --no-fail-fast" \
                cargo nextest run --workspace --no-fail-fast
        else
            log "cargo-nextest is not installed (cargo install cargo-nextest --locked); using cargo test"
            step "cargo test --workspace --no-fail-fast" cargo test --workspace --no-fail-fast
        fi
    else
        results+=("FAILED  start moto")
        failed=1
    fi

    log "summary"
    printf '    %s\n' "${results[@]}" >&2
    exit "$failed"
}

main "$@"
