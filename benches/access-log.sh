#!/usr/bin/env bash
# What the access log costs: the same redirector config served twice, the
# access log off and on (text or JSON, written to a file as a journal or a
# log shipper would take it), under the same keep-alive load, alternating.
# Prints each round, the medians and the ratio of "on" to "off"; the
# summary line's "nginx" column is the redirector with the log off.
#
#   bash benches/access-log.sh                  # 3 rounds of 10 s, text
#   FORMAT=json ROUNDS=5 bash benches/access-log.sh
#   CONTROL=1 bash benches/access-log.sh       # A/A: the log off on both sides
#   SINK=/dev/null bash benches/access-log.sh  # the log's own cost, without the disk's
#   PIN=1 bash benches/access-log.sh           # one serving thread each on CPU 0, wrk on CPU 1
#   WRK_NICE=-10 bash benches/access-log.sh   # wrk ahead of the servers in the CPU queue
#                                              # (needs root; see benches/load.sh)
#   WRK_DELAY_MS=1 bash benches/access-log.sh # below saturation: the log's CPU per request
#                                              # without a queue (see benches/load.sh)
#   RATE=50000 bash benches/access-log.sh     # an open loop at a fixed rate instead of wrk: the
#                                              # log's p50 and p99 without a closed loop's queue
#                                              # (examples/open_loop.rs; see benches/load.sh)
#   NGINX=1 bash benches/access-log.sh         # the reference: nginx's access log, off and on
#                                              # (buffer=64k flush=100ms), to the same sink
#
# Everything runs on loopback. Installs wrk if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-2}
FORMAT=${FORMAT:-text}
PIN=${PIN:-0}
server_cpu=()
if [ "$PIN" = 1 ]; then WORKERS=1; server_cpu=(taskset -c 0); export WRK_PREFIX="taskset -c 1"; fi
if [ -n "${WRK_NICE:-}" ]; then export WRK_PREFIX="nice -n $WRK_NICE ${WRK_PREFIX:-}"; fi
OFF=127.0.0.1:18191
ON=127.0.0.1:18192

source benches/common.sh
need wrk wrk
cargo build --release -q --example bench_fixture --example open_loop --bin distri-redirector
# Logs outside the config's folder, which the service watches for changes.
scratch logs

if [ "${NGINX:-0}" = 1 ]; then
  need nginx nginx-light
  # Two nginx, the same `return 302` as benches/load.sh, one writing a line
  # of about the redirector's fields per request, buffered as the
  # redirector buffers.
  for side in off on; do
    addr=$OFF log="access_log off;"
    if [ "$side" = on ]; then addr=$ON log="access_log ${SINK:-$logs/on.log} fields buffer=64k flush=100ms;"; fi
    nginx_conf "$work/$side" "$WORKERS" <<NGINX
  log_format fields '\$time_iso8601 \$remote_addr \$request_method \$request_uri \$status \$request_time';
  server {
    listen $addr;
    $log
    location / { return 302 https://m1.example.org/distri-mirror\$request_uri; }
  }
NGINX
    "${server_cpu[@]}" nginx -c "$work/$side/nginx.conf" -p "$work/$side" -g 'daemon off;' &
    pids+=($!)
    for _ in $(seq 50); do curl -s -o /dev/null "http://$addr/" && break; sleep 0.1; done
  done
  off_pid=${pids[0]}; on_pid=${pids[1]}
  echo "NGINX=1: both sides are nginx, its access log off and on"
else
start_fixture "$work/off.toml" --mirrors 50 --listen "$OFF" --interval 10s --workers "$WORKERS"
sed -e "s|$OFF|$ON|" "$work/off.toml" > "$work/on.toml"
if [ "${CONTROL:-0}" = 1 ]; then
  echo "CONTROL=1: the log is off on both sides"
else
  printf '\n[log]\naccess = true\nformat = "%s"\n' "$FORMAT" >> "$work/on.toml"
fi
# [log] must not land inside the last [[mirror]] table: check it parses.
target/release/distri-redirector check --config "$work/on.toml" >/dev/null

"${server_cpu[@]}" target/release/distri-redirector serve --config "$work/off.toml" 2>"$logs/off.log" &
off_pid=$!; pids+=($off_pid)
"${server_cpu[@]}" target/release/distri-redirector serve --config "$work/on.toml" 2>"${SINK:-$logs/on.log}" &
on_pid=$!; pids+=($on_pid)
wait_up "$logs/off.log" 50
if [ -z "${SINK:-}" ]; then wait_up "$logs/on.log" 50; fi
check_choice "http://$OFF"; check_choice "http://$ON"
fi
# A server's processes: nginx's master and workers, or the redirector.
procs() { echo "$1" $(pgrep -P "$1"); }

load="wrk -t1 -c$CONNS -d$DURATION keep-alive"
[ -n "${RATE:-}" ] && load="open loop at $RATE req/s for $DURATION (the first 2 s not counted)"
echo "$load, $ROUNDS rounds, each side first in every other; access log format: $FORMAT"
: > "$work/r.off"; : > "$work/r.on"
for r in $(seq "$ROUNDS"); do
  # Which goes first alternates, as in load.sh.
  if [ $((r % 2)) = 1 ]; then
    a=$(wrk_run "http://$OFF" 0 $(procs "$off_pid")); b=$(wrk_run "http://$ON" 0 $(procs "$on_pid"))
  else
    b=$(wrk_run "http://$ON" 0 $(procs "$on_pid")); a=$(wrk_run "http://$OFF" 0 $(procs "$off_pid"))
  fi
  echo "  round $r: log off $a | log on $b"
  echo "$a" >> "$work/r.off"; echo "$b" >> "$work/r.on"
done
summarise "log-on" "$work/r.off" "$work/r.on" | sed -e 's/nginx/log off/g' -e 's/redirector/log on/g'
if [ -z "${SINK:-}" ]; then
  if [ "${NGINX:-0}" = 1 ]; then n=$(wc -l < "$logs/on.log"); first=$(head -1 "$logs/on.log")
  else n=$(grep -c '"access"\|access:' "$logs/on.log" || true); first=$(grep -m1 'access' "$logs/on.log" || true); fi
  echo "access log lines written: $n; one of them:"
  echo "$first"
fi
