#!/usr/bin/env bash
# Who waits for a CPU under load: nginx's `return 302` and the redirector,
# one after the other, under the same keep-alive wrk load as load.sh. For
# each server's threads and for wrk, prints the share of the measured
# seconds spent running, spent runnable but waiting for a CPU (the run
# queue), and how many times a second each was switched in; then the share
# of the machine left idle. From /proc/PID/task/TID/schedstat.
#
# It is the diagnosis behind load.sh's WRK_NICE: on two cores shared with
# wrk, the redirector's workers kept wrk waiting in the run queue about a
# sixth of the time while a core sat idle (benches/RESULTS.md).
#
#   bash benches/runqueue.sh
#   WRK_NICE=-10 bash benches/runqueue.sh    # wrk ahead of the servers (needs root)
#   GEOIP=a.mmdb,b.mmdb bash benches/runqueue.sh
#
# Everything runs on loopback. Installs wrk and nginx-light if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-2}
WRK_NICE=${WRK_NICE:-0}
MEASURE=${MEASURE:-5}   # seconds measured, inside a run of MEASURE + 5
NGINX=127.0.0.1:18182
REDIRECTOR=127.0.0.1:18181

source benches/common.sh
need wrk wrk
need nginx nginx-light
cargo build --release -q --example bench_fixture --bin distri-redirector
scratch

start_fixture "$work/mirrors.toml" --mirrors 50 --listen "$REDIRECTOR" --interval 10s --workers "$WORKERS" \
  --geoip "${GEOIP:-geoip/dbip-city-lite-compact.mmdb}"
target/release/distri-redirector serve --config "$work/mirrors.toml" 2>"$work/redirector.log" &
redirector_pid=$!
pids+=($redirector_pid)
nginx_conf "$work" "$WORKERS" <<NGINX
  server {
    listen $NGINX;
    location / { return 302 https://m1.example.org/distri-mirror\$request_uri; }
  }
NGINX
nginx -c "$work/nginx.conf" -p "$work" -g 'daemon off;' &
nginx_pid=$!
pids+=($nginx_pid)
wait_up "$work/redirector.log" 50 >/dev/null
check_choice "http://$REDIRECTOR"

# Every thread of the given processes: "pid/tid name run_ns wait_ns slices".
threads() {
  for p in "$@"; do
    for t in /proc/"$p"/task/*; do
      echo "$p/${t##*/} $(tr ' ' _ < "$t/comm") $(cat "$t/schedstat")"
    done
  done
}

echo "wrk -t1 -c64 keep-alive at nice $WRK_NICE; $(nproc) cores; serving threads each: $WORKERS; $MEASURE s measured"
for side in nginx redirector; do
  if [ "$side" = nginx ]; then
    target=$NGINX; procs=$(pgrep -P "$nginx_pid" | tr '\n' ' ')
  else
    target=$REDIRECTOR; procs=$redirector_pid
  fi
  nice -n "$WRK_NICE" wrk -t1 -c64 -d"$((MEASURE + 5))s" -s benches/xff.lua "http://$target" > "$work/wrk.out" &
  wrk_pid=$!
  sleep 2
  # shellcheck disable=SC2086 # one pid per word
  threads $procs "$wrk_pid" | sort > "$work/before"
  idle_before=$(idle_ticks)
  sleep "$MEASURE"
  # shellcheck disable=SC2086
  threads $procs "$wrk_pid" | sort > "$work/after"
  idle_after=$(idle_ticks)
  wait "$wrk_pid"
  echo "$side: $(awk '/Requests\/sec/{print $2}' "$work/wrk.out") req/s, machine idle" \
    "$(echo "$idle_before $idle_after" | awk '{printf "%.1f%%", 100*($3-$1)/($4-$2)}')"
  # Threads that ran less than 1% of the time (timers, the prober) are left out.
  join "$work/before" "$work/after" | awk -v s="$MEASURE" '{
    run = ($7 - $3) / (s * 1e7); queued = ($8 - $4) / (s * 1e7)
    if (run >= 1) printf "  %-16s running %5.1f%%  waiting for a CPU %5.1f%%  switched in %6.0f/s\n", $2, run, queued, ($9 - $5) / s
  }'
done
