#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests use,
# then checks formatting and lints and runs every test once, in one build
# profile (dev, with optimized dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the data set the accuracy tests read, nginx, the static
# web server the update tests publish channels on, qemu with the arm64
# C library, under which the firmware test runs an image's binary,
# GStreamer with the plugins the video tests encode, decode and stream
# with (edgevit opens it at run time; the tests make their clips with
# gst-launch-1.0) and its RTSP server for Python (tools/rtsp-server.py),
# and Chromium, the browser the live view's page is tested in. Nothing
# here is needed to build: no crate of the workspace compiles against system
# headers or libraries.
packages=(dataset-fashion-mnist nginx qemu-user-static libc6-arm64-cross libgcc-s1-arm64-cross
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gir1.2-gst-rtsp-server-1.0 python3-gi chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "tools/test.sh: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# zig, cargo-zigbuild and the aarch64 standard library, with which the
# firmware test cross-compiles images (tools/tests/firmware_build.rs).
tools/cross-setup.sh aarch64-unknown-linux-gnu

# Prometheus' Python client, whose parser reads the live view's /metrics
# (tests/tests/http.rs), pinned, in the same .venv/.
prometheus_wheel=prometheus_client==0.26.0
.venv/bin/python -m pip list --format=freeze 2>/dev/null | grep -qixF "$prometheus_wheel" ||
  .venv/bin/python -m pip install -q --disable-pip-version-check "$prometheus_wheel"

# NVRTC, the CUDA runtime and CCCL headers, and ptxas, with which
# kernels/tests/nvrtc.rs compiles every kernels/cuda/*.cu to PTX for every
# board and assembles it to SASS, and runtime/src/cuda.rs's tests compile
# tract-cuda's kernels for Orin and Hopper (no GPU needed): NVIDIA's wheels
# from PyPI, pinned, in .venv-cuda/. CUDA 12.9 is the last release whose
# NVRTC still targets Xavier (compute_72); it knows Thor as compute_101.
cuda_wheels=(nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-cccl-cu12==12.9.27
  nvidia-cuda-nvcc-cu12==12.9.86)
cuda_venv=.venv-cuda
installed=""
[ -x "$cuda_venv/bin/python" ] && installed="$("$cuda_venv/bin/python" -m pip list --format=freeze 2>/dev/null || true)"
for w in "${cuda_wheels[@]}"; do
  if ! grep -qixF "$w" <<<"$installed"; then
    echo "tools/test.sh: installing ${cuda_wheels[*]} into $cuda_venv/"
    [ -x "$cuda_venv/bin/python" ] || python3 -m venv "$cuda_venv" || {
      echo "tools/test.sh: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
      exit 1
    }
    "$cuda_venv/bin/python" -m pip install -q --disable-pip-version-check "${cuda_wheels[@]}"
    break
  fi
done
cuda_site="$("$cuda_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for f in "$cuda_site/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" "$cuda_site/nvidia/cuda_runtime/include/cuda_fp16.h" \
  "$cuda_site/nvidia/cuda_cccl/include/cuda/std/cstdint" "$cuda_site/nvidia/cuda_nvcc/bin/ptxas"; do
  [ -f "$f" ] || { echo "tools/test.sh: $f is missing; remove $cuda_venv/ and rerun" >&2; exit 1; }
done
# cudarc looks for libnvrtc.so.12 among its names; the headers are passed to
# NVRTC as --include-path; the kernel test runs ptxas from EDGEVIT_PTXAS.
export LD_LIBRARY_PATH="$cuda_site/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export EDGEVIT_CUDA_INCLUDE="$cuda_site/nvidia/cuda_runtime/include:$cuda_site/nvidia/cuda_cccl/include"
export EDGEVIT_PTXAS="$cuda_site/nvidia/cuda_nvcc/bin/ptxas"

cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# Every fuzz target of fuzz/ for 30 s (tools/fuzz.sh installs the pinned
# nightly toolchain and cargo-fuzz); a crash fails the run.
tools/fuzz.sh 30
