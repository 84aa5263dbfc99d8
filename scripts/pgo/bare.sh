#!/usr/bin/env bash
# The bare hyper proxy (examples/bare_proxy.rs) built with a profile, as jwtgate is by
# scripts/pgo/build.sh: target/pgo/bare_proxy, the floor to hold the profile-guided jwtgate
# against (docs/performance.md, "A profiled floor"). About 7 minutes on 2 cores.
#
#   scripts/pgo/bare.sh
#   BARE_BINS=target/pgo/bare_proxy scripts/bench/instructions.sh
#   PGO_OUT=target/pgo-lines CARGO_PROFILE_RELEASE_DEBUG=line-tables-only scripts/pgo/bare.sh
#       # with line tables, into a folder of its own (as in scripts/pgo/build.sh)
#
# 1. bare_proxy built with instrumentation in target/pgo/bare-gen;
# 2. its one workload as training: the carried mode behind nginx's `return 200` upstream,
#    wrk -c64 for 8 s and -c256 for 4 s (GET), then SIGTERM, on which it exits and writes
#    its profile;
# 3. llvm-profdata (scripts/pgo/common.sh) merges it into target/pgo/bare.profdata;
# 4. bare_proxy built again with the profile in target/pgo/bare-use, copied to
#    target/pgo/bare_proxy.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/configs.sh
install_missing wrk nginx
OUT=${PGO_OUT:-target/pgo}
mkdir -p "$OUT"

. scripts/pgo/common.sh

kill_on_exit

rm -rf "$OUT/bare-raw"
instrumented_build "$OUT/bare-gen" --example bare_proxy

upstream_conf "$PWD/$OUT" 127.0.0.1:18781 > "$OUT/bare-upstream.conf"
nginx -c "$PWD/$OUT/bare-upstream.conf" & PIDS+=($!)
LLVM_PROFILE_FILE="$PWD/$OUT/bare-raw/%p-%m.profraw" \
  "$OUT/bare-gen/release/examples/bare_proxy" 127.0.0.1:18780 127.0.0.1:18781 carried &
proxy=$!
PIDS+=("$proxy")
until curl -sf -o /dev/null http://127.0.0.1:18780/x; do sleep 0.2; done
wrk -t1 -c64 -d8s http://127.0.0.1:18780/x | grep 'Requests/sec'
wrk -t1 -c256 -d4s http://127.0.0.1:18780/x | grep 'Requests/sec'
kill -TERM "$proxy"
wait "$proxy"
merge_profiles "$OUT/bare-raw" 1 "$OUT/bare.profdata"
profiled_build "$OUT/bare.profdata" "$OUT/bare-use" --example bare_proxy
cp "$OUT/bare-use/release/examples/bare_proxy" "$OUT/bare_proxy"
echo "profile-guided bare proxy: $OUT/bare_proxy (profile $OUT/bare.profdata)"
