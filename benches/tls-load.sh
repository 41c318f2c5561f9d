#!/usr/bin/env bash
# TLS load: the redirector's HTTPS listener against nginx terminating TLS
# with the same certificate and `return 302`, alternating, same wrk
# settings. Keep-alive HTTP/1.1 over TLS, and a new TLS connection per
# request (handshakes per second). Prints medians and ratios.
#
#   bash benches/tls-load.sh               # ECDSA P-256, 3 rounds of 10 s
#   KEY=rsa ROUNDS=5 bash benches/tls-load.sh
#
# Loopback only; installs wrk and nginx-light if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
KEY=${KEY:-ec}
WORKERS=${WORKERS:-2}
REDIRECTOR=127.0.0.1:18443
NGINX=127.0.0.1:18444

source benches/common.sh
need wrk wrk
need nginx nginx-light
need openssl openssl
cargo build --release -q --example bench_fixture --bin distri-redirector
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

if [ "$KEY" = rsa ]; then keyopt=(-newkey rsa:2048); else keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); fi
openssl req -x509 "${keyopt[@]}" -nodes -days 2 -subj /CN=localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

target/release/examples/bench_fixture --mirrors 50 --out "$work/mirrors.toml" --listen 127.0.0.1:0 --interval 10s --workers "$WORKERS" 2>"$work/fixture.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/mirrors.toml" ] && break; sleep 0.1; done
printf '\n[tls]\nlisten = ["%s"]\ncert = "%s"\nkey = "%s"\n' "$REDIRECTOR" "$work/cert.pem" "$work/key.pem" > "$work/tls.toml"
# [tls] must come before the [[mirror]] tables: put it after the top-level keys.
awk -v tls="$(cat "$work/tls.toml")" '/^\[probe\]/ && !done { print tls; print ""; done = 1 } { print }' "$work/mirrors.toml" > "$work/r.toml"
target/release/distri-redirector serve --config "$work/r.toml" 2>"$work/redirector.log" &
redirector_pid=$!
pids+=($redirector_pid)
wait_up "$work/redirector.log" 50

nginx_conf "$work" "$WORKERS" <<NGINX
  server {
    # Debian 12's nginx (1.22) predates "http2 on".
    listen $NGINX ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    # nginx closes a connection after 1000 requests by default, and h2load
    # does not reconnect: the redirector has no such limit.
    keepalive_requests 1000000;
    location / { return 302 https://m1.example.org/distri-mirror\$request_uri; }
  }
NGINX
nginx -c "$work/nginx.conf" -p "$work" -g 'daemon off;' &
nginx_pid=$!
pids+=($nginx_pid)
for _ in $(seq 50); do curl -sk -o /dev/null "https://$NGINX/" && break; sleep 0.1; done

run() { # target close -> "rps p99_ms"
  WRK_CLOSE=$2 wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s benches/xff.lua "https://$1" 2>/dev/null |
    awk 'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
         /Requests\/sec/ { rps = $2 } / 99%/ { p99 = ms($2) } END { printf "%.0f %.3f\n", rps, p99 }'
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo "TLS ($KEY key), wrk -t1 -c$CONNS -d$DURATION, $ROUNDS rounds alternating, $WORKERS serving threads each"
for mode in keepalive close; do
  close=0; [ "$mode" = close ] && close=1
  : > "$work/n"; : > "$work/r"
  for r in $(seq "$ROUNDS"); do
    n=$(run "$NGINX" $close); d=$(run "$REDIRECTOR" $close)
    echo "  $mode round $r: nginx $n | redirector $d"
    echo "$n" >> "$work/n"; echo "$d" >> "$work/r"
  done
  nr=$(cut -d' ' -f1 "$work/n" | median); np=$(cut -d' ' -f2 "$work/n" | median)
  rr=$(cut -d' ' -f1 "$work/r" | median); rp=$(cut -d' ' -f2 "$work/r" | median)
  awk -v m="$mode" -v nr="$nr" -v np="$np" -v rr="$rr" -v rp="$rp" 'BEGIN {
    printf "%-9s nginx %7d req/s p99 %7.3f ms | redirector %7d req/s p99 %7.3f ms | throughput %.2fx, p99 %.2fx\n", m, nr, np, rr, rp, rr / nr, rp / np }'
done
if command -v h2load >/dev/null; then
  echo "HTTP/2 (h2load -c16 -m50 -n200000):"
  for t in "$NGINX" "$REDIRECTOR"; do
    printf '  %s: ' "$t"
    h2load -c16 -m50 -n200000 -H 'X-Forwarded-For: 193.0.6.139' "https://$t/distri/jackherer/pkg/bash-amd64-5.0-4.squashfs" 2>/dev/null | grep -E '^(finished in|requests:)' | tr '\n' ' '; echo
  done
else
  echo "HTTP/2: h2load not installed (apt-get install nghttp2-client)"
fi
