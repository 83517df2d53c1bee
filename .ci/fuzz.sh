#!/usr/bin/env bash
# Smoke-fuzzes parallel-proto: builds every cargo-fuzz target in fuzz/ and
# runs each for a few seconds, starting from its checked-in corpus
# (fuzz/corpus/<target>/, minimized after 10-minute runs: RELIABILITY.md,
# "Fuzzing"), so every input that ever found new coverage is replayed first.
# Fails on any crash, panic, leak or timeout.
#
# Run from anywhere inside the repo: bash .ci/fuzz.sh
# FUZZ_SECONDS sets the time per target (default 6).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${FUZZ_SECONDS:-6}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd fuzz
echo "fuzz: building targets"
cargo +nightly fuzz build

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
targets=$(cargo +nightly fuzz list)
for target in $targets; do
    echo "fuzz: $target for ${seconds}s"
    # -timeout: any single input slower than this is a hang, hence a failure.
    if ! cargo +nightly fuzz run "$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=0 >"$log" 2>&1; then
        tail -n 80 "$log"
        echo "fuzz: $target FAILED; the input is saved under fuzz/artifacts/$target/" >&2
        echo "fuzz: reproduce with: cd fuzz && cargo +nightly fuzz run $target <artifact>" >&2
        exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$log" | sed "s/^/fuzz: $target: /"
done
echo "fuzz: every target ran ${seconds}s without a crash"
