#!/usr/bin/env bash
# The profile-guided release build of jwtgate: target/pgo/jwtgate (docs/performance.md,
# "Profile-guided build"). About 10 minutes on 2 cores.
#
#   scripts/pgo/build.sh
#   LLVM_PROFDATA=/path/to/llvm-profdata scripts/pgo/build.sh
#
# 1. jwtgate built with instrumentation (-Cprofile-generate) in target/pgo/gen;
# 2. the training run, examples/pgo_train.rs, against that binary: two gateways, a fixed mix
#    of traffic, every answer checked; the gateways write raw profiles as they exit;
# 3. llvm-profdata merges them into target/pgo/jwtgate.profdata;
# 4. jwtgate built again with the profile (-Cprofile-use) in target/pgo/use, copied to
#    target/pgo/jwtgate.
#
# llvm-profdata: see scripts/pgo/profdata.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=target/pgo
mkdir -p "$OUT"

. scripts/pgo/profdata.sh

# The training driver is an ordinary build; only the gateway it runs is instrumented.
cargo build --release --locked --example pgo_train

# Build scripts and proc macros are instrumented too and write their own profiles while
# building: into build-raw, which is not used. Names uncompressed: llvm-profdata builds without
# zlib (the wheel's) cannot read compressed ones, and any llvm-profdata reads these.
rm -rf "$OUT/raw" "$OUT/build-raw"
CARGO_ENCODED_RUSTFLAGS="-Cprofile-generate=$PWD/$OUT/build-raw"$'\x1f'"-Cllvm-args=-enable-name-compression=false" \
  cargo build --release --locked --bin jwtgate --target-dir "$OUT/gen"

LLVM_PROFILE_FILE="$PWD/$OUT/raw/%p-%m.profraw" \
  target/release/examples/pgo_train "$OUT/gen/release/jwtgate"
profiles=("$OUT"/raw/*.profraw)
if [ ${#profiles[@]} -ne 2 ] || [ ! -s "${profiles[0]}" ]; then
  echo "expected the two training gateways' profiles in $OUT/raw, found: ${profiles[*]}" >&2
  exit 1
fi
"$profdata" merge -o "$OUT/jwtgate.profdata" "${profiles[@]}"

# Cargo does not look at the profile's content: a path named by it makes a new profile a new
# flag, so the build below is redone whenever the profile changes.
sum=$(sha256sum "$OUT/jwtgate.profdata" | cut -c1-16)
rm -f "$OUT"/profile-*.profdata
cp "$OUT/jwtgate.profdata" "$OUT/profile-$sum.profdata"
CARGO_ENCODED_RUSTFLAGS="-Cprofile-use=$PWD/$OUT/profile-$sum.profdata" \
  cargo build --release --locked --bin jwtgate --target-dir "$OUT/use"
cp "$OUT/use/release/jwtgate" "$OUT/jwtgate"
echo "profile-guided build: $OUT/jwtgate (profile $OUT/jwtgate.profdata)"
