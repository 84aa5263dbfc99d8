#!/usr/bin/env bash
# Load benchmark: jwtgate against nginx (plain proxy) and HAProxy (JWT policy), on loopback.
#
#   scripts/bench/run.sh                  # 5 rounds x 8 s, -c64 and -c256 (about 35 min)
#   ROUNDS=1 DURATION=2 scripts/bench/run.sh   # a quick smoke run
#   BODY_BYTES=16384 scripts/bench/run.sh  # the upstream answers with a body of that size
#                                          # (default: "ok\n", 3 bytes)
#   PGO=0 scripts/bench/run.sh             # without the profile-guided build's rows
#
# Every proxy under test runs with one worker on CPU 0; wrk and the upstream run on CPU 1.
# Rounds are interleaved (A B C D A B C D ...). Results: medians and ratios, printed and
# written to $OUT/summary.md. Installs wrk, nginx and haproxy from Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/configs.sh

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
CONNS=${CONNS:-"64 256"}
OUT=${OUT:-$(mktemp -d /tmp/jwtgate-bench.XXXXXX)}
PROXY_CPU=0
LOAD_CPU=1
mkdir -p "$OUT/runs" "$OUT/conf"

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null \
  || ! command -v redis-server >/dev/null; then
  apt-get update -q && apt-get install -y -q wrk nginx haproxy redis-server
fi
cargo build --release --locked --bin jwtgate --example bench_issuer --example bare_proxy
# The profile-guided build (scripts/pgo/build.sh, about 10 minutes) is measured beside the
# plain release build: the jwtgate-pgo-* targets.
PGO=${PGO:-1}
[ "$PGO" = 0 ] || scripts/pgo/build.sh

kill_on_exit

# The local issuer: keys for jwtgate, tokens and the public key for the load.
taskset -c $LOAD_CPU target/release/examples/bench_issuer 18180 "$OUT" & PIDS+=($!)
for _ in $(seq 100); do [ -s "$OUT/tokens.txt" ] && break; sleep 0.1; done
ISSUER=$(cat "$OUT/issuer.txt")

# Upstream: nginx answering 200 (the floor), with "ok\n" or $BODY_BYTES bytes.
cat > "$OUT/conf/upstream.conf" <<NGINX
worker_processes 1; daemon off; pid $OUT/upstream.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:18081 reuseport backlog=4096; keepalive_requests 1000000;
    $(scripts/bench/upstream-body.sh "$OUT") } }
NGINX
taskset -c $LOAD_CPU nginx -c "$OUT/conf/upstream.conf" & PIDS+=($!)

# nginx as a plain reverse proxy (no auth).
cat > "$OUT/conf/proxy.conf" <<NGINX
worker_processes 1; daemon off; pid $OUT/proxy.pid; error_log stderr error;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:18081; keepalive 256; }
  server { listen 127.0.0.1:18082 backlog=4096; keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX
taskset -c $PROXY_CPU nginx -c "$OUT/conf/proxy.conf" & PIDS+=($!)

# HAProxy with the policy jwtgate enforces: RS256 signature, iss, aud, exp, a group, a
# per-subject stick-table counter.
cat > "$OUT/conf/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
backend per_sub
  stick-table type string len 64 size 1m expire 60s store http_req_rate(60s)
frontend api
  bind 127.0.0.1:18083
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str RS256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$OUT/pubkey.pem") -m int 1 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str $ISSUER }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.aud') -m str api://bench }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int le 0 }
  http-request deny deny_status 403 unless { var(txn.bearer),jwt_payload_query('\$.groups[0]') -m str bench }
  http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('\$.sub')
  http-request track-sc0 var(txn.sub) table per_sub
  http-request deny deny_status 429 if { sc_http_req_rate(0) gt 100000000 }
  default_backend up
backend up
  http-reuse always
  server s1 127.0.0.1:18081
HAP
taskset -c $PROXY_CPU haproxy -f "$OUT/conf/haproxy.cfg" -db & PIDS+=($!)

# jwtgate: one worker, a rate limit high enough never to trigger, identity headers.
{
  gateway_toml 127.0.0.1:18084 "$ISSUER" 127.0.0.1:18081 'admin_listen = "127.0.0.1:18094"'
  # The over-limit gateway below uses this route with its limit of 1 per hour.
  printf '[[routes]]\npath = "/limited"\nupstream = "up"\ngroups = ["bench"]\n'
} > "$OUT/conf/jwtgate.toml"
RUST_LOG=warn taskset -c $PROXY_CPU target/release/jwtgate run --config "$OUT/conf/jwtgate.toml" \
  --log-format json 2> "$OUT/jwtgate.log" & PIDS+=($!)
# Over-limit traffic: a second gateway on the same core whose bench limit is 1 per hour.
sed -e 's/18084/18085/; s/18094/18095/; s/requests = 1000000000, per = "1s"/requests = 1, per = "1h"/' \
  "$OUT/conf/jwtgate.toml" > "$OUT/conf/jwtgate-limited.toml"
RUST_LOG=warn taskset -c $PROXY_CPU target/release/jwtgate run --config "$OUT/conf/jwtgate-limited.toml" \
  --log-format json 2> "$OUT/jwtgate-limited.log" & PIDS+=($!)

# jwtgate deciding its limits in Redis (SPEC §7), Redis on the load CPU like the upstream.
taskset -c $LOAD_CPU redis-server --port 18096 --bind 127.0.0.1 --save "" --appendonly no \
  > "$OUT/redis.log" 2>&1 & PIDS+=($!)
sed -e 's/18084/18086/; s/18094/18097/; s/^\[rate_limits.groups\]/[rate_limits]\nbackend = "redis"\nredis_url = "redis:\/\/127.0.0.1:18096"\n[rate_limits.groups]/' \
  "$OUT/conf/jwtgate.toml" > "$OUT/conf/jwtgate-redis.toml"
RUST_LOG=warn taskset -c $PROXY_CPU target/release/jwtgate run --config "$OUT/conf/jwtgate-redis.toml" \
  --log-format json 2> "$OUT/jwtgate-redis.log" & PIDS+=($!)

# The same two configurations (local and Redis limits) served by the profile-guided build.
# Its training has no Redis in it (docs/performance.md): that row shows what untrained code
# costs.
if [ "$PGO" != 0 ]; then
  sed -e 's/18084/18087/; s/18094/18098/' "$OUT/conf/jwtgate.toml" > "$OUT/conf/jwtgate-pgo.toml"
  sed -e 's/18086/18090/; s/18097/18099/' "$OUT/conf/jwtgate-redis.toml" > "$OUT/conf/jwtgate-pgo-redis.toml"
  for conf in jwtgate-pgo jwtgate-pgo-redis; do
    RUST_LOG=warn taskset -c $PROXY_CPU target/pgo/jwtgate run --config "$OUT/conf/$conf.toml" \
      --log-format json 2> "$OUT/$conf.log" & PIDS+=($!)
  done
fi

# The floor of jwtgate's own HTTP machinery: hyper forwarding with nothing else, through
# hyper-util's pooled client and through a connection carried by the client connection
# (examples/bare_proxy.rs; jwtgate uses the latter for HTTP/1.1 clients).
taskset -c $PROXY_CPU target/release/examples/bare_proxy 127.0.0.1:18088 127.0.0.1:18081 pooled \
  & PIDS+=($!)
taskset -c $PROXY_CPU target/release/examples/bare_proxy 127.0.0.1:18089 127.0.0.1:18081 carried \
  & PIDS+=($!)

PORTS="18081 18082 18083 18084 18085 18086 18088 18089"
[ "$PGO" = 0 ] || PORTS="$PORTS 18087 18090"
for port in $PORTS; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
for admin in 18094 $([ "$PGO" = 0 ] || echo 18098); do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$admin/readyz" && break; sleep 0.1; done
done

run() { # scenario target conns round url [lua]
  local file="$OUT/runs/$1__$2__c$3__round$4.txt"
  local lua=()
  [ -n "${6:-}" ] && lua=(-s "$6")
  TOKEN_FILE="$OUT/token.txt" TOKENS_FILE="$OUT/tokens.txt" \
    taskset -c $LOAD_CPU wrk -t1 -c"$3" -d"${DURATION}s" --latency "${lua[@]}" "$5" > "$file" 2>&1 || true
}

for round in $(seq "$ROUNDS"); do
  for c in $CONNS; do
    echo "round $round, -c$c"
    run reused upstream-direct "$c" "$round" http://127.0.0.1:18081/api/x
    run reused nginx-proxy "$c" "$round" http://127.0.0.1:18082/api/x
    run reused hyper-pooled "$c" "$round" http://127.0.0.1:18088/api/x
    run reused hyper-carried "$c" "$round" http://127.0.0.1:18089/api/x
    run reused haproxy-jwt "$c" "$round" http://127.0.0.1:18083/api/x scripts/bench/bearer.lua
    run reused jwtgate-protected "$c" "$round" http://127.0.0.1:18084/api/x scripts/bench/bearer.lua
    run reused jwtgate-public "$c" "$round" http://127.0.0.1:18084/public/x
    run reused jwtgate-redis "$c" "$round" http://127.0.0.1:18086/api/x scripts/bench/bearer.lua
    if [ "$PGO" != 0 ]; then
      run reused jwtgate-pgo-protected "$c" "$round" http://127.0.0.1:18087/api/x scripts/bench/bearer.lua
      run reused jwtgate-pgo-public "$c" "$round" http://127.0.0.1:18087/public/x
      run reused jwtgate-pgo-redis "$c" "$round" http://127.0.0.1:18090/api/x scripts/bench/bearer.lua
    fi
    run distinct haproxy-jwt "$c" "$round" http://127.0.0.1:18083/api/x scripts/bench/tokens.lua
    run distinct jwtgate-protected "$c" "$round" http://127.0.0.1:18084/api/x scripts/bench/tokens.lua
    [ "$PGO" = 0 ] || run distinct jwtgate-pgo-protected "$c" "$round" http://127.0.0.1:18087/api/x scripts/bench/tokens.lua
    run over-limit jwtgate-429 "$c" "$round" http://127.0.0.1:18085/limited/x scripts/bench/bearer.lua
  done
done

RSS=$(awk '/VmRSS/ {print $2}' /proc/$(pgrep -f "jwtgate.toml" | head -1)/status 2>/dev/null || echo "?")
{
  echo "# jwtgate load benchmark"
  echo
  echo "$(date -u +%F), $(nproc) cores, $(uname -m); proxies pinned to CPU $PROXY_CPU with one worker,"
  echo "wrk -t1 and the upstream on CPU $LOAD_CPU; $ROUNDS rounds x ${DURATION}s, interleaved;"
  echo "command: ROUNDS=$ROUNDS DURATION=$DURATION${BODY_BYTES:+ BODY_BYTES=$BODY_BYTES} scripts/bench/run.sh"
  echo "jwtgate resident memory after the run: ${RSS} KiB"
  python3 scripts/bench/summarize.py "$OUT/runs"
} | tee "$OUT/summary.md"
echo "raw wrk outputs: $OUT/runs"
