#!/usr/bin/env bash
# The workspace's shape, checked by `make test` (docs/layout.md): no Rust source file is over
# 1,200 lines, and the product's normal dependencies leave out the test rig (the simulator,
# the AWS stand-in, and the HTTP server stack they are built on).
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
while read -r lines file; do
    if [ "$file" != total ] && [ "$lines" -gt 1200 ]; then
        echo "$file: $lines lines (at most 1,200: split it by job)" >&2
        status=1
    fi
done < <(git ls-files -z -- '*.rs' | xargs -0 wc -l)

tree=$(cargo tree --edges normal --package tmc-relay --prefix none --format '{p}')
for rig in axum tmc-sim fake-aws tmc-chaos tmc-bench; do
    if grep -q "^$rig v" <<<"$tree"; then
        echo "cargo tree -e normal -p tmc-relay lists $rig: the product must not depend on the rig" >&2
        status=1
    fi
done
[ "$status" = 0 ] && echo "layout: source files within 1,200 lines; the product's dependencies leave out the rig"
exit "$status"
