#!/usr/bin/env bash
# The profile-guided release build of jwtgate: target/pgo/jwtgate (docs/performance.md,
# "Profile-guided build"). About 10 minutes on 2 cores.
#
#   scripts/pgo/build.sh
#   LLVM_PROFDATA=/path/to/llvm-profdata scripts/pgo/build.sh
#   PGO_OUT=target/pgo-lines CARGO_PROFILE_RELEASE_DEBUG=line-tables-only scripts/pgo/build.sh
#       # the same build with line tables, into a folder of its own (a relative path): both
#       # builds and the training get the setting, so the profile fits the build it is used
#       # on, and callgrind or perf can put its instructions under source files and lines
#
# 1. jwtgate built with instrumentation (-Cprofile-generate) in target/pgo/gen;
# 2. the training run, examples/pgo_train.rs, against that binary: two gateways, a fixed mix
#    of traffic, every answer checked; the gateways write raw profiles as they exit;
# 3. llvm-profdata merges them into target/pgo/jwtgate.profdata;
# 4. jwtgate built again with the profile (-Cprofile-use) in target/pgo/use, copied to
#    target/pgo/jwtgate.
#
# llvm-profdata and the shared steps: scripts/pgo/common.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${PGO_OUT:-target/pgo}
mkdir -p "$OUT"

. scripts/pgo/common.sh

# The training driver is an ordinary build; only the gateway it runs is instrumented.
cargo build --release --locked --example pgo_train

rm -rf "$OUT/raw"
instrumented_build "$OUT/gen" --bin jwtgate

LLVM_PROFILE_FILE="$PWD/$OUT/raw/%p-%m.profraw" \
  target/release/examples/pgo_train "$OUT/gen/release/jwtgate"
merge_profiles "$OUT/raw" 2 "$OUT/jwtgate.profdata"
profiled_build "$OUT/jwtgate.profdata" "$OUT/use" --bin jwtgate
cp "$OUT/use/release/jwtgate" "$OUT/jwtgate"
echo "profile-guided build: $OUT/jwtgate (profile $OUT/jwtgate.profdata)"
