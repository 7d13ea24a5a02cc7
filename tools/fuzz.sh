#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for a bounded time and fails on the first
# crash (the reproducer lands in fuzz/artifacts/<target>/).
#
#   tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     # CI: 30 s each
#
# libFuzzer through cargo-fuzz needs a nightly toolchain; both are pinned and
# installed here when missing. The corpus of each target starts from the
# committed seeds (fuzz/corpus/<target>/, from the repository's real files)
# and grows in fuzz/target/corpus/<target>/, which is not committed.
# Prints the executions each target reached.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
toolchain=nightly-2026-10-29
cargo_fuzz_version=0.13.2

rustup toolchain list | grep -q "^$toolchain" || rustup toolchain install "$toolchain" --profile minimal
installed=$(cargo fuzz --version 2>/dev/null || true)
[ "$installed" = "cargo-fuzz $cargo_fuzz_version" ] || cargo install -q --locked "cargo-fuzz@$cargo_fuzz_version"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && cargo "+$toolchain" fuzz list)
(cd fuzz && cargo "+$toolchain" fuzz build -O)
status=0
for t in "${targets[@]}"; do
  work="fuzz/target/corpus/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=("-dict=$PWD/fuzz/dict/$t.dict")
  log="fuzz/target/$t.log"
  # -rss_limit_mb: the limit every hostile input must stay under as well.
  if (cd fuzz && cargo "+$toolchain" fuzz run -O "$t" "../$work" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
      -artifact_prefix="$PWD/artifacts/$t/" "${dict[@]}") >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  printf 'fuzz %-14s %-6s %12s executions in %ss\n' "$t" "$result" "$execs" "$seconds"
  [ "$result" = ok ] || tail -n 40 "$log"
done
exit $status
