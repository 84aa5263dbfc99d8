#!/usr/bin/env bash
# Heap allocations per request, counted by valgrind's DHAT, for jwtgate's protected route and
# the bare hyper proxy (carried connection), each on one worker against the same nginx
# upstream, with one token:
#
#   scripts/bench/allocations.sh                  # -c8 for 10 s each
#   CONNS=64 DURATION=20 scripts/bench/allocations.sh
#
# DHAT only sees allocations that go through the C allocator, so both are built with the
# `system-allocator` feature (no mimalloc), in release mode without LTO and with line tables,
# into target/dhat. The script prints, per target, the requests wrk counted, allocations and
# bytes per request, and the sites with at least one allocation per 4 requests, each with its
# average size and the first frames that are not the allocator's (docs/performance.md, "the
# working set"). Startup allocations are included, so count for long enough that they vanish.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/configs.sh
OUT=${OUT:-$(mktemp -d /tmp/jwtgate-allocations.XXXXXX)}
mkdir -p "$OUT"
install_missing wrk nginx valgrind
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --release --locked --features system-allocator --target-dir target/dhat \
  --bin jwtgate --example bench_issuer --example bare_proxy
BIN=target/dhat/release
CONNS=${CONNS:-8}
DURATION=${DURATION:-10}
export RUST_LOG=warn

kill_on_exit

issuer_and_upstream $BIN/examples 18480

# count NAME PORT PATH COMMAND...: runs COMMAND under DHAT, serving on 127.0.0.1:PORT.
count() {
  local name=$1 port=$2 path=$3; shift 3
  valgrind --tool=dhat --dhat-out-file="$OUT/dhat.$port.json" "$@" > "$OUT/$port.log" 2>&1 &
  local vg=$!
  PIDS+=($vg)
  until_answers "http://127.0.0.1:$port$path"
  TOKEN_FILE="$OUT/token.txt" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 60s \
    -s scripts/bench/bearer.lua "http://127.0.0.1:$port$path" > "$OUT/wrk.$port.txt"
  # SIGTERM: jwtgate drains and exits; valgrind writes the profile either way.
  kill -TERM "$vg"; wait "$vg" 2>/dev/null || true
  python3 - "$name" "$OUT/dhat.$port.json" "$OUT/wrk.$port.txt" <<'PY'
import json, re, sys
name, profile, wrk = sys.argv[1:]
n = int(re.search(r"(\d+) requests in", open(wrk).read()).group(1))
d = json.load(open(profile))
blocks = sum(p["tbk"] for p in d["pps"])
total = sum(p["tb"] for p in d["pps"])
print(f"\n{name}: {n} requests, {blocks / n:.1f} allocations and {total / n:,.0f} bytes per request")
allocator = ("alloc.rs", "library/alloc", "alloc::", "__rust", "RawVec", "raw_vec", "bytes_mut",
             "malloc", "realloc", "calloc", "boxed.rs", "sync.rs", "vec/mod.rs")
for p in sorted(d["pps"], key=lambda p: -p["tbk"]):
    if p["tbk"] / n < 0.25:
        break
    frames = [re.sub(r"^0x[0-9A-Fa-f]+: ", "", d["ftbl"][i]) for i in p["fs"]]
    mine = [f[:90] for f in frames if not any(a in f for a in allocator)][:3]
    print(f"  {p['tbk'] / n:5.2f}/request, {p['tb'] / p['tbk']:6.0f} B: " + " <- ".join(mine))
PY
}

gateway_toml 127.0.0.1:18490 "$(cat "$OUT/issuer.txt")" 127.0.0.1:18481 > "$OUT/gw.toml"
count "jwtgate protected" 18490 /api/x "$BIN/jwtgate" run --config "$OUT/gw.toml"
count "bare hyper proxy, carried" 18491 /x "$BIN/examples/bare_proxy" 127.0.0.1:18491 \
  127.0.0.1:18481 carried
