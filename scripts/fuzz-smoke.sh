#!/usr/bin/env bash
# Every fuzz target of fuzz/ for SECONDS each (default 30), on a copy of its
# corpus (CI does not grow the repo's), without a sanitizer: the code under
# test is safe Rust, a finding is a panic or a broken property, and an
# uninstrumented-allocator build runs several times more inputs a second.
# Fails on any finding; the input is left in fuzz/artifacts/TARGET/.
#   scripts/fuzz-smoke.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
# libFuzzer needs unstable rustc flags: allowed on stable, no nightly.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz 0.13.1'; then
    cargo install --locked cargo-fuzz@0.13.1
fi
start=$(date +%s)
cargo fuzz build -s none
echo "fuzz-smoke: built in $(($(date +%s) - start)) s"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
for target in $(cargo fuzz list); do
    mkdir -p "$work/$target"
    if [ -d "fuzz/corpus/$target" ]; then
        cp -r "fuzz/corpus/$target/." "$work/$target/"
    fi
    if cargo fuzz run -s none "$target" "$work/$target" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$work/$target.log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log")
        cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$work/$target.log" | tail -1)
        echo "fuzz-smoke: $target: $execs runs, $cov, no finding"
    else
        echo "fuzz-smoke: $target: FINDING (input in fuzz/artifacts/$target/):"
        tail -n 60 "$work/$target.log"
        failed+=("$target")
    fi
done
echo "fuzz-smoke: $(($(date +%s) - start)) s in all"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz-smoke: findings in: ${failed[*]}"
    exit 1
fi
