#!/usr/bin/env bash
# fuzz/run.sh [SECONDS] [TARGET...]: runs each fuzz target (all by default)
# for SECONDS (default 600) from the repository's root, on the nightly
# toolchain, with the committed seeds and a corpus kept in fuzz/corpus/.
# libFuzzer's final statistics go to fuzz/logs/TARGET.log; a crashing input
# is left in fuzz/artifacts/TARGET/ (copy it to tests/fuzz_regressions/ and
# add it to that test).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(path client config meta geoip)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "== $t for ${secs}s"
    # -timeout: one input taking 10 s is a hang, and a finding.
    cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"fuzz/logs/$t.log" 2>&1 || { echo "$t: FOUND SOMETHING, see fuzz/logs/$t.log"; tail -40 "fuzz/logs/$t.log"; exit 1; }
    grep -E "^stat::number_of_executed_units|^stat::peak_rss|cov:" "fuzz/logs/$t.log" | tail -3
done
