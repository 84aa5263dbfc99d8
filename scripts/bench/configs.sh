# Configuration files and set-up shared by the benchmark scripts (sourced, not run).

# kill_on_exit: the processes a script adds to PIDS are killed when it exits.
kill_on_exit() {
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
}

# until_answers URL: waits until URL answers 2xx to the bench token ($OUT/token.txt); for the
# protected route, that is once the gateway holds the issuer's keys.
until_answers() {
  until curl -sf -o /dev/null -H "Authorization: Bearer $(cat "$OUT/token.txt")" "$1"; do
    sleep 0.2
  done
}

# install_missing TOOL...: installs from Debian the tools not on PATH (`perf` is linux-perf).
install_missing() {
  local need=() tool
  for tool in "$@"; do command -v "$tool" >/dev/null || need+=("$tool"); done
  if [ ${#need[@]} -gt 0 ]; then
    need=("${need[@]/#perf/linux-perf}")
    apt-get update -q && apt-get install -y -q "${need[@]}"
  fi
}

# start_cpu0_targets PORT: the bench issuer on PORT and the upstream on CPU 1 (PORT+1), then
# each alone on CPU 0: jwtgate's protected route ($JWTGATE, PORT+2), nginx as a plain proxy
# (PORT+3) and the bare hyper proxy with a carried connection (PORT+4; $BARE if set, such as
# scripts/pgo/bare.sh's target/pgo/bare_proxy). Sets `names`, `urls` and `pids` (one each per
# target), adds every process to PIDS, and returns once each target answers 200 (jwtgate:
# once it holds the issuer's keys) and has had 2 s of load() to warm up.
# jwtgate's configuration sits in $OUT/conf, a folder of its own: jwtgate watches its file's
# folder for reloads, and the measurements' writes into $OUT would wake its watcher thread.
start_cpu0_targets() {
  local up=127.0.0.1:$(($1 + 1)) url
  target/release/examples/bench_issuer "$1" "$OUT" 1 & PIDS+=($!)
  until [ -s "$OUT/token.txt" ]; do sleep 0.1; done
  upstream_conf "$OUT" "$up" > "$OUT/upstream.conf"
  taskset -c 1 nginx -c "$OUT/upstream.conf" & PIDS+=($!)
  mkdir -p "$OUT/conf"
  gateway_toml "127.0.0.1:$(($1 + 2))" "$(cat "$OUT/issuer.txt")" "$up" > "$OUT/conf/jwtgate.toml"
  nginx_proxy_conf "$OUT" "127.0.0.1:$(($1 + 3))" "$up" > "$OUT/proxy.conf"
  names=(jwtgate-protected nginx-proxy hyper-carried)
  urls=("http://127.0.0.1:$(($1 + 2))/api/x" "http://127.0.0.1:$(($1 + 3))/x"
    "http://127.0.0.1:$(($1 + 4))/x")
  pids=()
  taskset -c 0 "$JWTGATE" run --config "$OUT/conf/jwtgate.toml" > "$OUT/jwtgate.log" 2>&1 &
  pids+=($!)
  taskset -c 0 nginx -c "$OUT/proxy.conf" & pids+=($!)
  taskset -c 0 "${BARE:-target/release/examples/bare_proxy}" "127.0.0.1:$(($1 + 4))" "$up" carried &
  pids+=($!)
  PIDS+=("${pids[@]}")
  warm_up "${urls[@]}"
}

# warm_up URL...: waits until each URL answers (until_answers), then loads it for 2 s.
warm_up() {
  local url
  for url in "$@"; do
    until_answers "$url"
    load "$url" 2 > /dev/null
  done
}

# load URL SECONDS: wrk (-t1 -c$CONNS, one token) on CPU 1; prints the requests it completed.
load() {
  TOKEN_FILE="$OUT/token.txt" taskset -c 1 wrk -t1 -c"$CONNS" -d"$2s" -s scripts/bench/bearer.lua \
    "$1" | awk '/requests in/ {print $1}'
}

# gateway_toml LISTEN ISSUER UPSTREAM [SERVER_LINE]: jwtgate with one worker; /api protected
# (group `bench`, a rate limit that never triggers, two identity headers), /public public;
# both to UPSTREAM. SERVER_LINE, if given, is one more line of [server].
gateway_toml() {
  cat <<TOML
[server]
listen = "$1"
workers = 1
${4:-}
[okta]
issuer = "$2"
audience = "api://bench"
[upstreams.up]
targets = ["http://$3"]
[[routes]]
path = "/api"
upstream = "up"
groups = ["bench"]
[[routes]]
path = "/public"
upstream = "up"
public = true
[rate_limits.groups]
bench = { requests = 1000000000, per = "1s" }
[forward]
claims_to_headers = { sub = "X-Auth-Subject", groups = "X-Auth-Groups" }
TOML
}

# nginx_proxy_conf DIR LISTEN UPSTREAM: nginx as run.sh's plain reverse proxy, in one process
# (no master, so the process measured is the one that serves).
nginx_proxy_conf() {
  cat <<NGINX
worker_processes 1; master_process off; daemon off; pid $1/proxy.pid; error_log stderr error;
events { worker_connections 1024; }
http { access_log off; upstream up { server $3; keepalive 64; }
  server { listen $2; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX
}

# upstream_conf DIR LISTEN: the upstream, nginx answering `ok\n` or $BODY_BYTES bytes.
upstream_conf() {
  cat <<NGINX
worker_processes 1; daemon off; pid $1/upstream.pid; error_log stderr error;
events { worker_connections 1024; }
http { access_log off;
  server { listen $2; keepalive_requests 1000000; $(scripts/bench/upstream-body.sh "$1") } }
NGINX
}

# issuer_and_upstream EXAMPLES PORT: the bench issuer (EXAMPLES/bench_issuer) on PORT, writing
# its keys and tokens into $OUT, then nginx's `return 200` upstream on PORT+1; both are added
# to PIDS. Returns once the issuer has written its token.
issuer_and_upstream() {
  "$1/bench_issuer" "$2" "$OUT" 1 & PIDS+=($!)
  until [ -s "$OUT/token.txt" ]; do sleep 0.1; done
  upstream_conf "$OUT" "127.0.0.1:$(($2 + 1))" > "$OUT/upstream.conf"
  nginx -c "$OUT/upstream.conf" & PIDS+=($!)
}
