#!/usr/bin/env bash
# edgevit against onnxruntime on the CPU, in one run on one machine, on the
# very same ONNX files: ViT-Ti/16-224 with mean pooling, with a GGeM head, and
# with a GGeM head and int8 weights; batch 1 and 8; 1 and 2 threads. Then
# what the GGeM head costs (fused op, exported ops, mean pooling) at batch 1
# on 1 thread, and the bundle sizes.
#
#   tools/bench-cpu.sh [ITERATIONS]       # default 40 (batch 8: a quarter)
#
# Latency is the p50 of one run of a whole batch; ratio = edgevit / onnxruntime
# (below 1: edgevit is faster). Models are random-weight timm exports made by
# tools/bench/vit_ti.py into out/bench/ (not committed). edgevit is the dev
# profile build the tests use (opt-level 2, dependencies included);
# onnxruntime and the exporters come from models/export/requirements.txt in
# .venv/, installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-40}
out=out/bench

. tools/bench/vit_ti.sh
vit_ti_exports
cargo build -q -p edgevit
edgevit=target/debug/edgevit
for model in mean ggem ggem-int8; do
  vit_ti_bundle $edgevit $model $out/bundle-$model
done

p50() { python3 -c "import json,sys; print('%.2f' % json.loads(sys.argv[1])['p50_ms'])" "$1"; }
ratio() { python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$1" "$2"; }
edgevit_p50() {
  p50 "$(RUST_LOG=error $edgevit bench --json --skip-signature --warmup 3 "$@" 2>/dev/null)"
}
ort_p50() { p50 "$(.venv/bin/python tools/bench/ort_bench.py "$@")"; }

printf '\nViT-Ti/16-224 on %s, p50 ms per batch\n' "$(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-16s %5s %7s %9s %12s %7s\n' model batch threads edgevit onnxruntime ratio
for model in mean ggem ggem-int8; do
  for batch in 1 8; do
    n=$iterations
    [ $batch = 1 ] || n=$(((iterations + 3) / 4))
    for threads in 1 2; do
      e=$(edgevit_p50 --bundle $out/bundle-$model --iterations $n --batch $batch --threads $threads)
      o=$(ort_p50 $out/vit-ti-$model.onnx $threads $n $batch)
      printf '%-16s %5s %7s %9s %12s %7s\n' "$model" $batch $threads "$e" "$o" "$(ratio "$e" "$o")"
    done
  done
done

mean=$(edgevit_p50 --bundle $out/bundle-mean --iterations "$iterations" --threads 1)
printf '\nThe GGeM head, batch 1, 1 thread (ratio = p50 / edgevit mean pooling)\n'
printf '%-34s %9s %7s\n' configuration p50 ratio
for row in "edgevit, mean pooling|$mean" \
  "edgevit, GGeM fused|$(edgevit_p50 --bundle $out/bundle-ggem --iterations "$iterations" --threads 1)" \
  "edgevit, GGeM as exported (6 ops)|$(edgevit_p50 --bundle $out/bundle-ggem --iterations "$iterations" --threads 1 --no-fusion)" \
  "onnxruntime, mean pooling|$(ort_p50 $out/vit-ti-mean.onnx 1 "$iterations")" \
  "onnxruntime, GGeM|$(ort_p50 $out/vit-ti-ggem.onnx 1 "$iterations")"; do
  printf '%-34s %9s %7s\n' "${row%|*}" "${row#*|}" "$(ratio "${row#*|}" "$mean")"
done

printf '\nBundle model sizes\n'
for model in ggem ggem-int8; do
  printf '%-16s %10s bytes\n' $model "$(stat -c %s $out/bundle-$model/model.onnx)"
done
