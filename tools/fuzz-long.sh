#!/usr/bin/env bash
# The fuzz targets for hours rather than seconds: tools/fuzz.sh with a long
# budget per target (default 2 hours each), printing executions per target.
#
#   tools/fuzz-long.sh [SECONDS_PER_TARGET] [TARGET...]
set -euo pipefail
exec "$(dirname "$0")/fuzz.sh" "${1:-7200}" "${@:2}"
