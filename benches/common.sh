# Shared by benches/load.sh, benches/tls-load.sh, benches/probe-cost.sh and
# deploy/replicas.sh: source it after `cd` to the repository root.

# need CMD PACKAGE: installs a Debian package when its command is missing.
need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }

# wait_up LOG N [SECONDS]: until N mirrors came up in a redirector's LOG
# (30 s at most); prints how many did, and fails when fewer. Requests are
# measured only once every mirror is verified, so each is a real choice.
wait_up() {
  local up=0
  for _ in $(seq "$(( ${3:-30} * 10 ))"); do
    up=$(grep -c 'to=up' "$1" || true)
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
