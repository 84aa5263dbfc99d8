#!/usr/bin/env bash
# The bare hyper proxy (examples/bare_proxy.rs) built with a profile, as jwtgate is by
# scripts/pgo/build.sh: target/pgo/bare_proxy, the floor to hold the profile-guided jwtgate
# against (docs/performance.md, "A profiled floor"). About 7 minutes on 2 cores.
#
#   scripts/pgo/bare.sh
#   BARE_BINS=target/pgo/bare_proxy scripts/bench/instructions.sh
#
# 1. bare_proxy built with instrumentation in target/pgo/bare-gen;
# 2. its one workload as training: the carried mode behind nginx's `return 200` upstream,
#    wrk -c64 for 8 s and -c256 for 4 s (GET), then SIGTERM, on which it exits and writes
#    its profile;
# 3. llvm-profdata (scripts/pgo/profdata.sh) merges it into target/pgo/bare.profdata;
# 4. bare_proxy built again with the profile in target/pgo/bare-use, copied to
#    target/pgo/bare_proxy.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/bench/configs.sh
install_missing wrk nginx
OUT=target/pgo
mkdir -p "$OUT"

. scripts/pgo/profdata.sh

kill_on_exit

rm -rf "$OUT/bare-raw" "$OUT/bare-build-raw"
CARGO_ENCODED_RUSTFLAGS="-Cprofile-generate=$PWD/$OUT/bare-build-raw"$'\x1f'"-Cllvm-args=-enable-name-compression=false" \
  cargo build --release --locked --example bare_proxy --target-dir "$OUT/bare-gen"

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
profiles=("$OUT"/bare-raw/*.profraw)
if [ ${#profiles[@]} -ne 1 ] || [ ! -s "${profiles[0]}" ]; then
  echo "expected the bare proxy's profile in $OUT/bare-raw, found: ${profiles[*]}" >&2
  exit 1
fi
"$profdata" merge -o "$OUT/bare.profdata" "${profiles[@]}"

# A profile's path in the flags makes a new profile a new build (as in build.sh).
sum=$(sha256sum "$OUT/bare.profdata" | cut -c1-16)
rm -f "$OUT"/bare-profile-*.profdata
cp "$OUT/bare.profdata" "$OUT/bare-profile-$sum.profdata"
CARGO_ENCODED_RUSTFLAGS="-Cprofile-use=$PWD/$OUT/bare-profile-$sum.profdata" \
  cargo build --release --locked --example bare_proxy --target-dir "$OUT/bare-use"
cp "$OUT/bare-use/release/examples/bare_proxy" "$OUT/bare_proxy"
echo "profile-guided bare proxy: $OUT/bare_proxy (profile $OUT/bare.profdata)"
