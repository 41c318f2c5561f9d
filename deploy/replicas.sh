#!/usr/bin/env bash
# Three replicas behind nginx on loopback, each probing on its own: shows
# that every client network gets the same mirror from every replica, and
# that stopping and restarting one replica midway fails no request.
#
#   bash deploy/replicas.sh                 # 3000 requests from 600 networks
#   REQUESTS=6000 NETWORKS=1000 bash deploy/replicas.sh
#
# A replica that has just started sends clients to the origin until its
# first probe round has verified the mirrors (it never guesses): answers
# from that window are counted and shown, not hidden. Everything runs on
# loopback; installs nginx-light if missing. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-3000}
NETWORKS=${NETWORKS:-600}
MIRRORS=${MIRRORS:-20}
LB=127.0.0.1:18280
PORTS=(18281 18282 18283)

source benches/common.sh
need nginx nginx-light
cargo build -q --release --example bench_fixture --bin distri-redirector
bin=target/release/distri-redirector

work=$(mktemp -d)
pids=()
cleanup() {
  kill $(cat "$work/restarted.pid" 2>/dev/null) 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_fixture "$work/base.toml" --mirrors "$MIRRORS" --listen 127.0.0.1:0 --interval 5s --workers 1

declare -A replica_pid
start_replica() { # index
  local i=$1 port=${PORTS[$1]}
  sed "s|^listen = .*|listen = [\"127.0.0.1:$port\"]|" "$work/base.toml" > "$work/r$i.toml"
  $bin serve --config "$work/r$i.toml" 2>>"$work/r$i.log" &
  replica_pid[$i]=$!
  pids+=($!)
}
for i in 0 1 2; do start_replica "$i"; done
for i in 0 1 2; do wait_up "$work/r$i.log" "$MIRRORS"; done

nginx_conf "$work" 1 <<NGINX
  upstream redirectors {
    server 127.0.0.1:${PORTS[0]} max_fails=1 fail_timeout=1s;
    server 127.0.0.1:${PORTS[1]} max_fails=1 fail_timeout=1s;
    server 127.0.0.1:${PORTS[2]} max_fails=1 fail_timeout=1s;
    keepalive 16;
  }
  server {
    listen $LB;
    location / {
      proxy_pass http://redirectors;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_redirect off;
      # A replica that is gone: the next one answers instead.
      proxy_next_upstream error timeout http_502 http_503;
    }
  }
NGINX
nginx -c "$work/nginx.conf" -p "$work" -g 'daemon off;' &
pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://$LB/healthz" && break; sleep 0.1; done

origin=$(sed -n 's/^origin = "\(.*\)"/\1/p' "$work/base.toml")
echo "${replica_pid[1]}" > "$work/stop.pid"
# The client: requests through nginx from many networks; at a third of
# them replica 1 is stopped (SIGTERM), at two thirds started again.
python3 - "$LB" "$REQUESTS" "$NETWORKS" "$origin" "$work" "$bin" "$MIRRORS" "${PORTS[@]}" <<'PY'
import http.client, os, random, subprocess, sys, time
lb, total, nets, origin, work, binary, mirrors = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7])
ports = sys.argv[8:]
random.seed(7)
# Networks spread over the IPv4 space, so they stand in many countries.
networks = ["%d.%d.%d" % (random.randint(1, 223), random.randint(0, 255), random.randint(0, 255)) for _ in range(nets)]
path = "/distri/jackherer/pkg/pkg001-amd64-1.0-1.squashfs"
def get(addr, net):
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    # One address per network: a /24 can straddle two places in the
    # database, and then two hosts of it rightly get different mirrors.
    c.request("GET", path, headers={"X-Forwarded-For": net + ".7"})
    r = c.getresponse(); r.read(); c.close()
    return r.status, r.getheader("Location") or ""
def base(loc):
    return "origin" if loc.startswith(origin) else loc.split("/distri/")[0]
seen, failed, origin_answers = {}, 0, 0
for i in range(total):
    if i == total // 3:
        os.kill(int(open(work + "/stop.pid").read()), 15)
        print("request %d: replica 1 stopped (SIGTERM)" % i, flush=True)
    if i == 2 * total // 3:
        log = open(work + "/r1-restarted.log", "w")
        p = subprocess.Popen([binary, "serve", "--config", work + "/r1.toml"], stderr=log)
        open(work + "/restarted.pid", "w").write(str(p.pid))
        print("request %d: replica 1 started again" % i, flush=True)
    net = networks[i % nets]
    status, loc = get(lb, net)
    if status != 302 or not loc.endswith(path):
        failed += 1; print("failed: %s %s %s" % (net, status, loc)); continue
    b = base(loc)
    if b == "origin":
        origin_answers += 1; continue
    seen.setdefault(net, set()).add(b)
split = [n for n, s in seen.items() if len(s) > 1]
print("through nginx: %d requests, %d failed, %d networks, %d answered by more than one mirror, %d origin answers (a replica warming up)"
      % (total, failed, len(seen), len(split), origin_answers))
# Once every replica has probed: each network asked of each replica directly.
for _ in range(300):
    if open(work + "/r1-restarted.log").read().count("to=up") >= mirrors:
        break
    time.sleep(0.1)
disagree = 0
for net in networks:
    answers = {base(get("127.0.0.1:" + p, net)[1]) for p in ports}
    if len(answers) != 1 or "origin" in answers:
        disagree += 1; print("replicas disagree for %s: %s" % (net, answers))
print("directly: %d networks x %d replicas, %d disagreements" % (len(networks), len(ports), disagree))
sys.exit(1 if failed or split or disagree else 0)
PY
