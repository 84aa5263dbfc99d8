#!/usr/bin/env bash
# Resident memory of jwtgate after N distinct callers, each with its own token, have been seen:
#
#   scripts/bench/memory.sh            # N = 1,000,000 (signing takes long: ~1 ms per token)
#   N=200000 scripts/bench/memory.sh
#
# One gateway (one worker) with a per-subject limit that never triggers, so every caller gets
# a bucket and every token a cache entry, up to their caps (max_tracked_callers, token cache).
# wrk sends each token once (tokens.lua cycles through the file), then the script prints the
# gateway's VmRSS and its token-cache and limiter figures from /metrics.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/configs.sh
N=${N:-1000000}
OUT=${OUT:-$(mktemp -d /tmp/jwtgate-memory.XXXXXX)}
mkdir -p "$OUT"
install_missing wrk nginx curl
cargo build --release --locked --bin jwtgate --example bench_issuer

kill_on_exit

echo "signing $N tokens..."
target/release/examples/bench_issuer 18280 "$OUT" "$N" & PIDS+=($!)
until [ -s "$OUT/issuer.txt" ] && grep -q . "$OUT/tokens.txt" 2>/dev/null \
  && [ "$(wc -l < "$OUT/tokens.txt")" -ge "$N" ]; do sleep 1; done
upstream_conf "$OUT" 127.0.0.1:18281 > "$OUT/upstream.conf"
nginx -c "$OUT/upstream.conf" & PIDS+=($!)

cat > "$OUT/jwtgate.toml" <<TOML
[server]
listen = "127.0.0.1:18284"
admin_listen = "127.0.0.1:18294"
workers = 1
[okta]
issuer = "$(cat "$OUT/issuer.txt")"
audience = "api://bench"
[upstreams.up]
targets = ["http://127.0.0.1:18281"]
[[routes]]
path = "/api"
upstream = "up"
groups = ["bench"]
[rate_limits.groups]
bench = { requests = 1000000000, per = "1h" }
TOML
RUST_LOG=warn target/release/jwtgate run --config "$OUT/jwtgate.toml" 2> "$OUT/jwtgate.log" & GW=$!
PIDS+=($GW)
until curl -sf -o /dev/null http://127.0.0.1:18294/readyz; do sleep 0.1; done

# Long enough for every token to be sent at least once at ~10k req/s (checked below: the
# token cache's misses must reach N).
SECS=$(( N / 8000 + 10 ))
TOKENS_FILE="$OUT/tokens.txt" wrk -t1 -c64 -d"${SECS}s" -s scripts/bench/tokens.lua \
  http://127.0.0.1:18284/api/x | grep -E "requests in|Requests/sec|Non-2xx" || true
echo "jwtgate VmRSS after $N distinct callers and tokens: $(awk '/VmRSS/ {print $2, $3}' /proc/$GW/status)"
curl -s http://127.0.0.1:18294/metrics | grep -E "^jwtgate_(token_cache_lookups_total|ratelimit_decisions_total)"
