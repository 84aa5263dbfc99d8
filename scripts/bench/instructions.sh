#!/usr/bin/env bash
# Userspace instructions per request, counted by valgrind's callgrind: stable from run to run
# (unlike req/s on a shared machine), so small hot-path changes can be measured.
#
#   scripts/bench/instructions.sh                 # jwtgate protected and public routes; nginx as
#                                                 # a plain proxy, the bare hyper proxy (pooled,
#                                                 # carried) and raw_proxy (no hyper) for
#                                                 # comparison
#   BINS="old/jwtgate target/release/jwtgate" scripts/bench/instructions.sh   # compare builds
#   BARE_BINS="target/release/examples/bare_proxy other/bare_proxy" scripts/bench/instructions.sh
#                                                 # more than one bare hyper proxy build
#   BODY_BYTES=16384 scripts/bench/instructions.sh   # upstream answers with a body of that size
#   CACHE_SIM=1 scripts/bench/instructions.sh     # also simulated cache misses per request
#   CONNS=256 scripts/bench/instructions.sh       # wrk's connections (default 8)
#   ONLY=jwtgate scripts/bench/instructions.sh    # skip nginx and the bare hyper proxy
#   DURATION=40 scripts/bench/instructions.sh     # seconds counted (default 8)
#   VALGRIND_OPTS=--LL=2097152,16,64 CACHE_SIM=1 scripts/bench/instructions.sh
#                                                 # simulate the 2 MiB L2 as the last level
#   BLAME=1 BINS=target/pgo-lines/jwtgate ONLY=jwtgate scripts/bench/instructions.sh
#                                                 # also which line of src/ each jwtgate
#                                                 # instruction comes from (blame.py), in
#                                                 # $OUT/blame.*.txt: needs a build with line
#                                                 # tables (scripts/pgo/build.sh's header)
#
# Each gateway runs under callgrind with one worker; wrk warms it up for 2 s, the counters are
# zeroed, wrk sends the one-token load for 8 s (-c8; or DURATION, CONNS), and the script prints
# the instructions counted divided by the requests served. The kernel's share (about 40 % of a
# core under load, docs/performance.md) is not counted. Set PROFILE=1 to keep each callgrind
# file in $OUT. The measured wrk opens its CONNS connections anew, and their set-up is counted:
# with many connections, count for longer (CONNS=256 DURATION=40: 256 set-ups in 18,000 requests).
# wrk waits up to 60 s for an answer: under valgrind one request among 256 connections takes
# longer than wrk's default 2 s, and wrk would reconnect.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/configs.sh
OUT=${OUT:-$(mktemp -d /tmp/jwtgate-instructions.XXXXXX)}
mkdir -p "$OUT"
install_missing wrk nginx valgrind
cargo build --release --locked --bin jwtgate --example bench_issuer --example bare_proxy \
  --example raw_proxy
BINS=${BINS:-target/release/jwtgate}
BARE_BINS=${BARE_BINS:-target/release/examples/bare_proxy}
CONNS=${CONNS:-8}
DURATION=${DURATION:-8}
export RUST_LOG=warn

kill_on_exit

issuer_and_upstream target/release/examples 18380

# count NAME PORT PATH COMMAND...: runs COMMAND under callgrind, serving on 127.0.0.1:PORT.
count() {
  local name=$1 port=$2 path=$3; shift 3
  local cg="$OUT/callgrind.$port${path//\//_}"
  valgrind --tool=callgrind ${CACHE_SIM:+--cache-sim=yes} ${BLAME:+--dump-instr=yes} \
    --callgrind-out-file="$cg" "$@" \
    > "$OUT/$port.log" 2>&1 &
  local vg=$!
  PIDS+=($vg)
  until_answers "http://127.0.0.1:$port$path"
  TOKEN_FILE="$OUT/token.txt" wrk -t1 -c"$CONNS" -d2s --timeout 60s \
    -s scripts/bench/bearer.lua "http://127.0.0.1:$port$path" > /dev/null
  callgrind_control -z "$vg" > /dev/null 2>&1
  local n
  n=$(TOKEN_FILE="$OUT/token.txt" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 60s \
    -s scripts/bench/bearer.lua "http://127.0.0.1:$port$path" | awk '/requests in/ {print $1}')
  callgrind_control -d "$vg" > /dev/null 2>&1
  kill "$vg"; wait "$vg" 2>/dev/null || true
  local dump ir
  dump=$(ls -t "$cg".* | head -1)
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  printf '%-34s %8d requests %8d instructions/request' "$name $path" "$n" $((ir / n))
  if [ -n "${CACHE_SIM:-}" ]; then
    # callgrind's simulated caches (the host's L1 and last-level sizes): misses per request
    # fetching instructions (I1), reading and writing data (D1), and in the last level (LL).
    awk -v n="$n" '/^events:/ { for (i = 2; i <= NF; i++) ev[i] = $i }
      /^(summary|totals):/ { for (i = 2; i <= NF; i++) v[ev[i]] = $i
        printf "; misses/request I1 %.0f, D1 %.0f, LL %.0f", v["I1mr"] / n,
          (v["D1mr"] + v["D1mw"]) / n, (v["ILmr"] + v["DLmr"] + v["DLmw"]) / n; exit }' "$dump"
  fi
  echo
  # Only the gateways (BINS) have lines of src/ to charge.
  if [ -n "${BLAME:-}" ] && [[ " $BINS " == *" $1 "* ]]; then
    scripts/bench/blame.py "$dump" "$n" "$1" > "$OUT/blame.$port${path//\//_}.txt"
    echo "  by source line: $OUT/blame.$port${path//\//_}.txt"
  fi
  [ -n "${PROFILE:-}" ] || rm -f "$cg" "$cg".*
}

port=18390
for bin in $BINS; do
  gateway_toml "127.0.0.1:$port" "$(cat "$OUT/issuer.txt")" 127.0.0.1:18381 > "$OUT/gw$port.toml"
  for path in /api/x /public/x; do
    count "$bin" "$port" "$path" "$bin" run --config "$OUT/gw$port.toml"
  done
  port=$((port + 1))
done
[ "${ONLY:-}" != jwtgate ] || exit 0
# nginx as the plain reverse proxy of run.sh, one process (no master), counted the same way.
nginx_proxy_conf "$OUT" "127.0.0.1:$port" 127.0.0.1:18381 > "$OUT/proxy.conf"
count "nginx plain proxy" "$port" /x nginx -c "$OUT/proxy.conf"
port=$((port + 1))
for bare in $BARE_BINS; do
  for mode in pooled carried; do
    count "$bare $mode" "$port" /x "$bare" "127.0.0.1:$port" 127.0.0.1:18381 "$mode"
    port=$((port + 1))
  done
done
# tokio and httparse with no hyper (examples/raw_proxy.rs): the ceiling of scripts/bench/ceiling.sh.
count "raw_proxy" "$port" /x target/release/examples/raw_proxy "127.0.0.1:$port" 127.0.0.1:18381
