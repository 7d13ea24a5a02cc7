#!/usr/bin/env bash
# GPU check of edgevit, in one call on a machine with an NVIDIA GPU, its
# driver, the CUDA toolkit (cuBLAS, cuDNN, NVRTC and headers, as tract's CUDA
# runtime needs), and PyTorch with CUDA. Needs no Rust and no network.
#
# 1. Kernels: tools/gpu/ggem_check.py compiles kernels/cuda/ggem.cu for the
#    GPU at hand, checks ggem_f16 and ggem_f32 against a float64 reference
#    (fresh random inputs, extremes, poisoned outputs, relaunch without
#    memset), then times them against a device-to-device copy of the same
#    bytes and the same pooling in PyTorch. About a minute.
# 2. Engine, when tools/gpu-prepare.sh has put the x86_64 release binary and
#    its inputs in out/gpu/: `edgevit doctor`; GPU fp16 against CPU fp32 on
#    the 20 samples (top-1 and logits); `edgevit bench` on a ViT-Ti/16-224
#    GGeM bundle with --backend cuda (weights f16, and Q4_0 with
#    --block-quant) and --backend cpu, and PyTorch eager FP16 on the same
#    architecture (tools/gpu/torch_peer.py), batch 1 and 32, in one table;
#    the shipped model's golden set; Fashion-MNIST 10k accuracy, GPU against
#    CPU. A few minutes; most important first, and a failed step does not
#    stop the rest. Both halves are bounded so that one call ends within 8
#    minutes.
# 3. One table (tools/gpu/summary.py) of the goals and what was measured
#    for each: GGeM GB/s against a copy and against PyTorch, ViT-Ti latency
#    against PyTorch, top-1 and accuracy against the CPU.
#
#   tools/gpu-check.sh [ggem_check.py options]    # e.g. --compiler nvrtc
#
# Results and the log go to $OUT when set, else out/gpu-check/. PYTHON picks
# the interpreter (default python3). Exit status: 0 all checks passed, 1 a
# check failed, 2 this machine cannot run the checks.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "tools/gpu-check.sh: $*" >&2
  exit 2
}

out="${OUT:-out/gpu-check}"
python="${PYTHON:-python3}"
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this check needs an NVIDIA GPU and its driver"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader ||
  die "nvidia-smi cannot query the GPU"
command -v "$python" >/dev/null || die "$python not found (set PYTHON)"
"$python" - <<'EOF' || die "$python has no PyTorch with a usable CUDA device (set PYTHON)"
import sys
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, devices {torch.cuda.device_count()}")
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
if command -v nvcc >/dev/null; then
  nvcc --version | tail -n 1
else
  echo "nvcc not found: compiling with NVRTC"
fi

mkdir -p "$out"
# The check is sized to finish in about a minute; the timeout only stops a
# hung GPU from holding the machine.
status=0
timeout 150 "$python" tools/gpu/ggem_check.py --out "$out" "$@" 2>&1 | tee "$out/ggem_check.log" || status=$?
case $status in
  0) echo "tools/gpu-check.sh: kernel checks passed" ;;
  124) echo "tools/gpu-check.sh: kernel checks timed out after 150 s" >&2 ;;
  *) echo "tools/gpu-check.sh: kernel checks failed (exit $status); log in $out/ggem_check.log" >&2 ;;
esac

engine=0
timeout 330 tools/gpu/engine_check.sh "$out" "$python" 2>&1 | tee "$out/engine_check.log" || engine=$?
case $engine in
  0) echo "tools/gpu-check.sh: engine checks passed" ;;
  3) echo "tools/gpu-check.sh: engine checks skipped (run tools/gpu-prepare.sh where Rust is, and carry what it lists)" ;;
  124) echo "tools/gpu-check.sh: engine checks timed out after 330 s" >&2 ;;
  *) echo "tools/gpu-check.sh: engine checks failed (exit $engine); log in $out/engine_check.log" >&2 ;;
esac
[ $status = 0 ] && [ $engine != 3 ] && status=$engine
# One table of every goal, from what both halves wrote (a goal whose step
# failed reads "not measured").
"$python" tools/gpu/summary.py "$out" | tee "$out/summary.md" || true
[ $status = 0 ] && echo "tools/gpu-check.sh: results in $out/"
exit $status
