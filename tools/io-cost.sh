#!/usr/bin/env bash
# What a frame costs besides the network, at 640x480, on the release
# binary: the CPU time of the whole process per classified frame, less the
# network stage's p50 (it runs on one thread), for
#
#   pattern   pattern:// -> null://            (the synthetic source alone)
#   http      pattern:// -> http:// with one client reading /stream.mjpg,
#             every frame drawn and JPEG-encoded (--output-fps 120)
#   mp4       file://clip.mp4 -> null://       (H.264 decoded and converted
#             to RGB by GStreamer: its threads count too)
#   raw       file://clip.mkv -> null://       (I420 converted to RGB only)
#
#   tools/io-cost.sh [FRAMES]                  # default 600
#
# Needs GStreamer with x264enc and matroskamux (tools/test.sh installs them),
# and curl. Prints each run's --profile table, then one line per case.
set -euo pipefail
cd "$(dirname "$0")/.."
frames=${1:-600}
cargo build -q --release -p edgevit --bin edgevit
bin=target/release/edgevit
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src="videotestsrc num-buffers=$frames pattern=ball ! video/x-raw,width=640,height=480,framerate=30/1,format=I420"
gst-launch-1.0 -q $src ! x264enc speed-preset=ultrafast ! mp4mux ! filesink location="$tmp/clip.mp4"
gst-launch-1.0 -q $src ! matroskamux ! filesink location="$tmp/clip.mkv"

# CPU seconds (user + system) of a command, into $cpu; its stdout into $tmp/out.
measure() {
  cpu=$(python3 - "$tmp/out" "$@" <<'PY'
import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    subprocess.run(sys.argv[2:], stdout=out, check=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_utime + usage.ru_stime)
PY
  )
}

report() {
  local name=$1
  local classified network
  classified=$(awk '/ frames, /{print $1; exit}' "$tmp/out")
  network=$(awk '$1 == "Network" {print $2}' "$tmp/out")
  echo "== $name"
  cat "$tmp/out"
  awk -v n="$name" -v c="$cpu" -v f="$classified" -v net="$network" 'BEGIN {
    per = 1000 * c / f
    printf "%-8s %6d frames  %7.3f ms CPU per frame  network p50 %7.3f ms  the rest %7.3f ms\n", n, f, per, net, per - net
  }' >>"$tmp/summary"
}

opts=(--frames "$frames" --profile --profile-every 1000000000 --input-width 640 --input-height 480)
measure "$bin" run pattern:// null:// "${opts[@]}" --input-rate 120
report pattern

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(sleep 1; curl -s -m 60 "http://127.0.0.1:$port/stream.mjpg" -o /dev/null || true) &
measure "$bin" run pattern:// "http://127.0.0.1:$port/" "${opts[@]}" --input-rate 120 --output-fps 120
report http
wait

measure "$bin" run "file://$tmp/clip.mp4" null:// "${opts[@]}"
report mp4
measure "$bin" run "file://$tmp/clip.mkv" null:// "${opts[@]}"
report raw

echo "== per frame ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
cat "$tmp/summary"
