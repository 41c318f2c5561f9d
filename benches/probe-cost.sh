#!/usr/bin/env bash
# Prober cost: 1,000 mirrors (one loopback server, one path prefix each)
# probed every 10 s; measures the redirector's CPU time over a steady-state
# window, with no requests, so all of it is the prober's.
#
#   bash benches/probe-cost.sh            # 1,000 mirrors, 60 s window
#   MIRRORS=200 WINDOW=30 bash benches/probe-cost.sh
#   BIN=/path/to/other/distri-redirector bash benches/probe-cost.sh   # another build (A/B)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
MIRRORS=${MIRRORS:-1000}
WINDOW=${WINDOW:-60}
BIN=${BIN:-target/release/distri-redirector}
cargo build --release -q --example bench_fixture --bin distri-redirector
scratch

start_fixture "$work/mirrors.toml" --mirrors "$MIRRORS" --listen 127.0.0.1:18190 --interval 10s
"$BIN" serve --config "$work/mirrors.toml" 2>"$work/redirector.log" &
pid=$!
pids+=($pid)
wait_up "$work/redirector.log" "$MIRRORS" 60
# Past the first rounds (which download each index once), into steady state.
sleep 15
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
t0=$(ticks); s0=$(date +%s.%N)
sleep "$WINDOW"
t1=$(ticks); s1=$(date +%s.%N)
awk -v t="$((t1 - t0))" -v hz="$hz" -v s0="$s0" -v s1="$s1" -v n="$MIRRORS" \
  'BEGIN { cpu = t / hz; wall = s1 - s0; printf "prober: %.2f s CPU in %.1f s = %.2f%% of one core for %d mirrors every 10 s\n", cpu, wall, 100 * cpu / wall, n }'
echo "redirector resident memory: $(awk '/VmRSS/ { print $2 / 1024 " MB" }' "/proc/$pid/status")"
