#!/usr/bin/env bash
# Every fuzz target of fuzz/ for SECONDS each (default 30), one per CPU at a
# time, on a copy of its corpus (CI does not grow the repo's), without a
# sanitizer: the code under test is safe Rust, a finding is a panic or a
# broken property, and an uninstrumented-allocator build runs several times
# more inputs a second.
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
bin=fuzz/target/x86_64-unknown-linux-gnu/release
# One target per CPU at a time (libFuzzer runs one thread each).
jobs=$(nproc)
one() { # TARGET: its run, its verdict in $work/TARGET.verdict
    local target=$1
    mkdir -p "$work/$target"
    if [ -d "fuzz/corpus/$target" ]; then
        cp -r "fuzz/corpus/$target/." "$work/$target/"
    fi
    mkdir -p "fuzz/artifacts/$target"
    if "$bin/$target" "$work/$target" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$target/" >"$work/$target.log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log")
        cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$work/$target.log" | tail -1)
        echo "fuzz-smoke: $target: $execs runs, $cov, no finding" >"$work/$target.verdict"
    else
        echo "FINDING" >"$work/$target.verdict"
    fi
}
targets=$(cargo fuzz list)
running=0
for target in $targets; do
    one "$target" &
    running=$((running + 1))
    if [ $running -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait
failed=()
for target in $targets; do
    if grep -q '^fuzz-smoke: ' "$work/$target.verdict" 2>/dev/null; then
        cat "$work/$target.verdict"
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
