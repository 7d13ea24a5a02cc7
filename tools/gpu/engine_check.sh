#!/usr/bin/env bash
# The engine half of tools/gpu-check.sh (see there): edgevit's CUDA backend
# against its CPU backend and against PyTorch eager FP16, on inputs
# tools/gpu-prepare.sh left in out/gpu/.
#
#   tools/gpu/engine_check.sh OUT PYTHON
#
# Exit status: 0 passed, 1 a check failed, 3 out/gpu/ is not prepared.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$1 python=$2
dir=out/gpu
edgevit=$dir/edgevit
fmnist=$dir/fashion-mnist
for f in "$edgevit" "$dir/vit-ti-ggem-int8/manifest.toml" "$fmnist/t10k-images-idx3-ubyte.gz" "$fmnist/t10k-labels-idx1-ubyte.gz"; do
  [ -e "$f" ] || { echo "engine_check: $f is missing"; exit 3; }
done
samples=(models/samples/fashion-mnist/*.png)

# tract's CUDA runtime loads cudart, cuBLAS, cuDNN and NVRTC by name: offer
# the toolkit's and those that came with PyTorch.
torch_libs=$("$python" - <<'EOF'
import glob, os, site
import torch
dirs = [os.path.join(os.path.dirname(torch.__file__), "lib")]
for sp in site.getsitepackages():
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")))
print(":".join(d for d in dirs if os.path.isdir(d)))
EOF
)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$torch_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -d /usr/local/cuda ] && export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

echo "== edgevit doctor"
"$edgevit" doctor
failed=0
check() { # name, then a command that prints one line and fails on a mismatch
  local name=$1
  shift
  if "$@"; then echo "PASS $name"; else echo "FAIL $name"; failed=1; fi
}

echo "== the 20 samples: GPU fp16 against CPU fp32"
# A step that fails is reported and the script goes on, so that one call
# shows everything that works.
RUST_LOG=warn "$edgevit" classify --json --top-k 1 --backend cuda "${samples[@]}" >"$out/samples-cuda.jsonl" || failed=1
RUST_LOG=warn "$edgevit" classify --json --top-k 1 --backend cpu "${samples[@]}" >"$out/samples-cpu.jsonl" || failed=1
compare_samples() {
  "$python" - "$out/samples-cuda.jsonl" "$out/samples-cpu.jsonl" <<'EOF'
import json, sys
gpu, cpu = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
if len(gpu) != len(cpu) or not cpu:
    sys.exit(f"samples: {len(gpu)} results on cuda, {len(cpu)} on cpu")
agree = sum(g["top_k"][0]["class"] == c["top_k"][0]["class"] for g, c in zip(gpu, cpu))
diff = max(abs(a - b) for g, c in zip(gpu, cpu) for a, b in zip(g["logits"], c["logits"]))
scale = max(abs(b) for c in cpu for b in c["logits"])
tolerance = 5e-2  # HALF_LOGIT_TOLERANCE in runtime/src/engine.rs
print(f"samples: top-1 agree {agree}/{len(cpu)}, max |logit diff| {diff:.3e} "
      f"(tolerance {tolerance:.0e}; largest |logit| {scale:.2f})")
sys.exit(0 if agree == len(cpu) and diff <= tolerance else 1)
EOF
}
check "samples: top-1 and logits" compare_samples

echo "== ViT-Ti/16-224 GGeM, int8 weights dequantized: edgevit cuda (weights f16, then Q4_0), edgevit cpu, PyTorch eager fp16"
bench() { # backend batch iterations [args]
  RUST_LOG=warn "$edgevit" bench --json --skip-signature --bundle "$dir/vit-ti-ggem-int8" --backend "$1" \
    --batch "$2" --iterations "$3" --warmup 10 "${@:4}"
}
: >"$out/bench.jsonl"
for batch in 1 32; do
  n=200
  [ $batch = 1 ] || n=50
  bench cuda $batch $n >>"$out/bench.jsonl" || failed=1
  bench cuda $batch $n --block-quant >>"$out/bench.jsonl" || failed=1
  bench cpu $batch $(((n + 9) / 10)) --threads 0 >>"$out/bench.jsonl" || failed=1
done
"$python" tools/gpu/torch_peer.py 200 1 32 >>"$out/bench.jsonl" || failed=1
"$python" - "$out/bench.jsonl" <<'EOF' || failed=1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
peer = {r["batch"]: r for r in rows if r.get("runtime", "").startswith("pytorch")}
print(f"{'runtime':<34} {'batch':>5} {'p50 ms':>8} {'p99 ms':>8} {'images/s':>9} {'p50 / pytorch':>14}")
for r in rows:
    name = r.get("runtime") or (f"edgevit {r['backend']} {r['float']}" + (" q4_0" if r["block_quant"] else "")
                                + (f" ({r['threads']} threads)" if r["backend"] == "cpu" else ""))
    ips = r.get("images_per_s") or r["throughput"]
    ratio = f"{r['p50_ms'] / peer[r['batch']]['p50_ms']:.2f}" if r["batch"] in peer else "-"
    print(f"{name:<34} {r['batch']:>5} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {ips:>9.1f} {ratio:>14}")
EOF

echo "== golden set of the shipped model, GPU fp16 (tolerance: the f16 one)"
check "golden set on cuda" "$edgevit" bundle verify --backend cuda
check "golden set on cpu" "$edgevit" bundle verify --backend cpu

echo "== Fashion-MNIST 10k"
eval_json() {
  RUST_LOG=warn "$edgevit" eval --json --idx-images "$fmnist/t10k-images-idx3-ubyte.gz" \
    --idx-labels "$fmnist/t10k-labels-idx1-ubyte.gz" "$@"
}
eval_json --backend cuda >"$out/eval-cuda.json" || failed=1
eval_json --backend cuda --block-quant >"$out/eval-cuda-q4_0.json" || failed=1
eval_json --backend cpu --threads 0 >"$out/eval-cpu.json" || failed=1
compare_eval() { # run, allowed difference in points
  "$python" - "$out/eval-$1.json" "$out/eval-cpu.json" "$2" <<'EOF'
import json, sys
run, cpu = (json.load(open(p)) for p in sys.argv[1:3])
allowed = float(sys.argv[3])
d = run["accuracy"] - cpu["accuracy"]
print(f"accuracy: {run['backend']} {run['float']}{' q4_0' if run['block_quant'] else ''} {run['accuracy']:.2f}% "
      f"in {run['seconds']:.1f} s, cpu {cpu['float']} {cpu['accuracy']:.2f}% in {cpu['seconds']:.1f} s, "
      f"difference {d:+.2f} pt (allowed {allowed})")
sys.exit(0 if abs(d) <= allowed else 1)
EOF
}
check "accuracy within 0.3 pt" compare_eval cuda 0.3
check "Q4_0 accuracy within 0.5 pt" compare_eval cuda-q4_0 0.5
exit $failed
