#!/usr/bin/env bash
# What the GGeM head costs on ViT-Ti/16-224, in one run on one machine:
# edgevit with the fused op, edgevit running the exported ops, the same ViT
# with mean pooling, and onnxruntime on the very same ONNX files (1 thread).
#
#   tools/bench-ggem.sh [ITERATIONS]
#
# Models are random-weight timm exports made by tools/bench/vit_ti.py into
# out/bench/ (not committed). Needs the Python environment of models/export.
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-40}
out=out/bench

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import timm, onnxruntime" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install -q -r models/export/requirements.txt
fi
[ -f $out/vit-ti-ggem.onnx ] || .venv/bin/python tools/bench/vit_ti.py $out
cargo build -q -p edgevit
edgevit=target/debug/edgevit

for pooling in mean ggem; do
  rm -rf $out/bundle-$pooling
  $edgevit bundle create --model $out/vit-ti-$pooling.onnx --labels $out/labels.txt \
    --name vit-ti-$pooling --version 1 --width 224 --height 224 \
    --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \
    --golden-image $out/image.png --out $out/bundle-$pooling >/dev/null
done

bench() { RUST_LOG=error $edgevit bench --json --skip-signature --iterations "$iterations" --warmup 5 "$@" 2>/dev/null; }
field() { python3 -c "import json,sys; print('%.2f' % json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

mean=$(bench --bundle $out/bundle-mean)
fused=$(bench --bundle $out/bundle-ggem)
unfused=$(bench --bundle $out/bundle-ggem --no-fusion)
ort_mean=$(.venv/bin/python tools/bench/ort_bench.py $out/vit-ti-mean.onnx 1 "$iterations")
ort_ggem=$(.venv/bin/python tools/bench/ort_bench.py $out/vit-ti-ggem.onnx 1 "$iterations")

m=$(field "$mean" p50_ms)
printf '\nViT-Ti/16-224, batch 1, 1 thread, %s iterations (p50 / p99 ms; ratio = p50 / edgevit mean-pooling p50)\n' "$iterations"
printf '%-34s %9s %9s %7s\n' configuration p50 p99 ratio
row() { printf '%-34s %9s %9s %7s\n' "$1" "$(field "$2" p50_ms)" "$(field "$2" p99_ms)" \
  "$(python3 -c "print('%.3f' % ($(field "$2" p50_ms) / $m))")"; }
row "edgevit, mean pooling" "$mean"
row "edgevit, GGeM fused" "$fused"
row "edgevit, GGeM as exported (6 ops)" "$unfused"
row "onnxruntime, mean pooling" "$ort_mean"
row "onnxruntime, GGeM" "$ort_ggem"
