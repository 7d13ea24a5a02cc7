#!/usr/bin/env bash
# Soak test of `edgevit run` with a hot swap every N frames from a local
# channel; prints RSS and FPS over the run (see tools/soak.py).
#
#   tools/soak.sh                              # 100k frames, a swap every 10k
#   tools/soak.sh --frames 5000 --swap-every 1500 --max-growth-mib 4
#
# Uses the binary of the one build profile the tests use (dev, optimized).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p edgevit --bin edgevit
exec python3 tools/soak.py --bin target/debug/edgevit "$@"
