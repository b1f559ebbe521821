#!/usr/bin/env bash
# `make test`: the template checks, the stack deployed into ministack, then every Rust test
# against the moto and ministack started here. Runs everything even when something fails,
# stops what it started whatever happens, and exits non-zero when anything failed.
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
        local name=$1 started=$SECONDS
        shift
        log "$name"
        if "$@"; then
            results+=("ok      $name ($((SECONDS - started)) s)")
        else
            results+=("FAILED  $name ($((SECONDS - started)) s)")
            failed=1
        fi
    }

    step "cfn-lint template.yaml" .venv/bin/cfn-lint template.yaml
    step "pytest infra/tests/test_template.py" \
        .venv/bin/python -m pytest -q -p no:cacheprovider infra/tests/test_template.py
    step "docs: links and make targets" .venv/bin/python infra/check_docs.py
    step "pytest infra/tests/test_check_docs.py" \
        .venv/bin/python -m pytest -q -p no:cacheprovider infra/tests/test_check_docs.py
    step "layout: file sizes, the product's dependencies" infra/check-layout.sh

    use_dummy_aws
    local services=1
    start_moto || { results+=("FAILED  start moto"); failed=1; services=0; }
    # A moto of its own for the test that relays thousands of messages: moto serves one
    # request at a time, so that test's requests would queue ahead of every other test's.
    start_moto moto-bulk MOTO_BULK_ENDPOINT \
        || { results+=("FAILED  start moto-bulk"); failed=1; services=0; }
    # Without ministack the stack test fails below (MINISTACK_ENDPOINT unset): never skipped.
    start_ministack || { results+=("FAILED  start ministack"); failed=1; }
    step "cargo build --bins" cargo build --bins
    # The stack test deploys template.yaml into ministack with the host-built bootstrap.
    step "pytest infra/tests/test_local_stack.py (template.yaml deployed into ministack)" \
        .venv/bin/python -m pytest -q -p no:cacheprovider infra/tests/test_local_stack.py
    if [ "$services" = 1 ]; then
        if cargo nextest --version >/dev/null 2>&1; then
            step "cargo nextest run --workspace --no-fail-fast" \
                cargo nextest run --workspace --no-fail-fast
        else
            log "cargo-nextest is not installed (cargo install cargo-nextest --locked); using cargo test"
            step "cargo test --workspace --no-fail-fast" cargo test --workspace --no-fail-fast
        fi
    fi

    log "summary"
    printf '    %s\n' "${results[@]}" >&2
    exit "$failed"
}

main "$@"
