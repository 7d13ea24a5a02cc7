#!/usr/bin/env bash
# Cross-compiles edgevit for a board with a glibc no newer than the board's
# floor, and checks the binary's GLIBC version needs against that floor.
#
#   tools/cross-build.sh BOARD [--release]      # e.g. jetson-xavier-nx
#
# How: zig as the C compiler and linker (the `ziglang` wheel from PyPI, in
# .venv/) through cargo-zigbuild, which links against the glibc version named
# in the target (aarch64-unknown-linux-gnu.2.31). The v4l crate generates its
# bindings with bindgen at build time; for a foreign target it gets zig's copy
# of the Linux and glibc headers. Prints the binary's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
board=${1:?usage: tools/cross-build.sh BOARD [--release]}
profile=debug
cargo_profile=()
if [ "${2:-}" = "--release" ]; then profile=release; cargo_profile=(--release); fi

cargo build -q -p edgevit --bin edgevit
read -r target glibc < <(target/debug/edgevit boards --current --board "$board" --json |
  python3 -c 'import json,sys; b=json.load(sys.stdin); print(b["target"], b["glibc"])')

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import ziglang" 2>/dev/null || .venv/bin/pip install -q ziglang==0.17.1
command -v cargo-zigbuild >/dev/null || cargo install -q --locked cargo-zigbuild@0.24.1
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

zig_include="$PWD/.venv/lib/python3.11/site-packages/ziglang/lib/libc/include"
arch=${target%%-*}
export PATH="$PWD/.venv/bin:$PATH"
export BINDGEN_EXTRA_CLANG_ARGS="-I$zig_include/$arch-linux-gnu -I$zig_include/generic-glibc -I$zig_include/$arch-linux-any -I$zig_include/any-linux-any"
# One target directory per glibc floor: the final link differs, the
# compiled crates could be shared but cargo would not relink on its own.
target_dir="target/cross-glibc-$glibc"
cargo zigbuild -q "${cargo_profile[@]}" -p edgevit --bin edgevit --target "$target.$glibc" --target-dir "$target_dir"
binary="$target_dir/$target/$profile/edgevit"

needed=$(readelf -V "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
if [ "$(printf '%s\n%s\n' "$needed" "$glibc" | sort -V | tail -n 1)" != "$glibc" ]; then
  echo "tools/cross-build.sh: $binary needs GLIBC_$needed, newer than $board's $glibc" >&2
  exit 1
fi
echo "tools/cross-build.sh: $board ($target, glibc floor $glibc): needs GLIBC_$needed at most" >&2
echo "$binary"
