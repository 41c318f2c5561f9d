#!/usr/bin/env bash
# TLS load: the redirector's HTTPS listener against nginx terminating TLS
# with the same certificate and `return 302`, alternating, same wrk
# settings. Keep-alive HTTP/1.1 over TLS, and a new TLS connection per
# request (handshakes per second). Prints medians and ratios, with each
# server's CPU time per request (all its processes and threads). The
# fixture's mirrors are HTTPS here (`bench_fixture --https-mirrors`), so
# each request is a real choice among 50 mirrors, as in load.sh.
#
#   bash benches/tls-load.sh               # ECDSA P-256, 3 rounds of 10 s
#   KEY=rsa ROUNDS=5 bash benches/tls-load.sh
#   NGINX_TLS12=1 bash benches/tls-load.sh # nginx at Debian 12's default, TLS 1.2 only
#
# Loopback only; installs wrk, nginx-light, openssl and h2load (nghttp2-client)
# if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
KEY=${KEY:-ec}
NGINX_PROTOCOLS="TLSv1.2 TLSv1.3"; [ "${NGINX_TLS12:-0}" = 1 ] && NGINX_PROTOCOLS="TLSv1.2"
WORKERS=${WORKERS:-2}
REDIRECTOR=127.0.0.1:18443
NGINX=127.0.0.1:18444

source benches/common.sh
need wrk wrk
need nginx nginx-light
need openssl openssl
need h2load nghttp2-client
cargo build --release -q --example bench_fixture --bin distri-redirector
scratch

if [ "$KEY" = rsa ]; then keyopt=(-newkey rsa:2048); else keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); fi
openssl req -x509 "${keyopt[@]}" -nodes -days 2 -subj /CN=localhost -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

start_fixture "$work/mirrors.toml" --mirrors 50 --listen 127.0.0.1:0 --interval 10s --workers "$WORKERS" --https-mirrors
printf '\n[tls]\nlisten = ["%s"]\ncert = "%s"\nkey = "%s"\n' "$REDIRECTOR" "$work/cert.pem" "$work/key.pem" > "$work/tls.toml"
# [tls] must come before the [[mirror]] tables: put it after the top-level keys.
awk -v tls="$(cat "$work/tls.toml")" '/^\[probe\]/ && !done { print tls; print ""; done = 1 } { print }' "$work/mirrors.toml" > "$work/r.toml"
target/release/distri-redirector serve --config "$work/r.toml" 2>"$work/redirector.log" &
redirector_pid=$!
pids+=($redirector_pid)
wait_up "$work/redirector.log" 50

# A client over HTTPS is never sent to a plain-HTTP mirror: the fixture's
# mirrors are HTTPS here (a TLS front with a CA of its own, which the
# probes trust), so every answer is a choice among them, as over HTTP.
check_choice "https://$REDIRECTOR"
nginx_conf "$work" "$WORKERS" <<NGINX
  server {
    # Debian 12's nginx (1.22) predates "http2 on".
    listen $NGINX ssl http2;
    # Debian 12's nginx (1.22) speaks TLS 1.2 at most unless told; 1.23.4
    # and later offer 1.3 by default. Both sides at TLS 1.3 compare like
    # with like: a TLS 1.2 resumption skips the key exchange that a TLS 1.3
    # one does, which makes wrk's side of a handshake three times cheaper
    # (NGINX_TLS12=1 measures that case).
    ssl_protocols $NGINX_PROTOCOLS;
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

echo "TLS ($KEY key), wrk -t1 -c$CONNS -d$DURATION, $ROUNDS rounds alternating, $WORKERS serving threads each"
for mode in keepalive close; do
  close=0; [ "$mode" = close ] && close=1
  : > "$work/n.$mode"; : > "$work/r.$mode"
  for r in $(seq "$ROUNDS"); do
    n=$(wrk_run "https://$NGINX" $close "$nginx_pid" $(pgrep -P "$nginx_pid"))
    d=$(wrk_run "https://$REDIRECTOR" $close "$redirector_pid")
    echo "  $mode round $r: nginx $n | redirector $d"
    echo "$n" >> "$work/n.$mode"; echo "$d" >> "$work/r.$mode"
  done
  summarise "$mode" "$work/n.$mode" "$work/r.$mode"
done
echo "HTTP/2 (h2load -c16 -m50 -n200000):"
for t in "$NGINX" "$REDIRECTOR"; do
  printf '  %s: ' "$t"
  h2load -c16 -m50 -n200000 -H 'X-Forwarded-For: 193.0.6.139' "https://$t/distri/jackherer/pkg/pkg013-amd64-1.0-1.squashfs" 2>/dev/null | grep -E '^(finished in|requests:)' | tr '\n' ' '; echo
done
