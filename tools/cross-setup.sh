#!/usr/bin/env bash
# Installs what `edgevit-tools firmware build` cross-compiles with, when
# missing:
#   tools/cross-setup.sh [TRIPLE...]      # default: aarch64-unknown-linux-gnu
#
# - zig, the C compiler and linker that links against any glibc version:
#   the `ziglang` wheel from PyPI, pinned, in .venv/;
# - cargo-zigbuild, pinned, whose `zig cc` adapts rustc's linker arguments
#   to zig;
# - the Rust standard library of each TRIPLE (rustup target add).
set -euo pipefail
cd "$(dirname "$0")/.."
zig_wheel=ziglang==0.17.1
zigbuild_version=0.24.1
triples=("$@")
[ ${#triples[@]} -gt 0 ] || triples=(aarch64-unknown-linux-gnu)

if ! { [ -x .venv/bin/python ] && .venv/bin/python -m pip list --format=freeze 2>/dev/null | grep -qixF "$zig_wheel"; }; then
  echo "tools/cross-setup.sh: installing $zig_wheel into .venv/"
  [ -x .venv/bin/python ] || python3 -m venv .venv || {
    echo "tools/cross-setup.sh: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
  }
  .venv/bin/python -m pip install -q --disable-pip-version-check "$zig_wheel"
fi

if [ "$(cargo-zigbuild --version 2>/dev/null)" != "cargo-zigbuild $zigbuild_version" ]; then
  echo "tools/cross-setup.sh: installing cargo-zigbuild $zigbuild_version"
  cargo install -q --locked "cargo-zigbuild@$zigbuild_version"
fi

installed=$(rustup target list --installed)
for t in "${triples[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
