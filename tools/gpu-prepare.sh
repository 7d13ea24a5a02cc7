#!/usr/bin/env bash
# Prepares out/gpu/ for the engine half of tools/gpu-check.sh, here where
# Rust and the network are, for a GPU machine that has neither: the x86_64
# edgevit binary (release profile, stripped), a ViT-Ti/16-224 GGeM bundle
# (tools/bench/vit_ti.py's export, random weights, in .venv/ as
# tools/bench-cpu.sh makes it) and Fashion-MNIST's test set. Then carry
# out/gpu (about 50 MiB) to the GPU machine and run tools/gpu-check.sh there.
#
# The bundle is the one with int8 weights (6 MB against 23 MB in fp32), so
# that all of it fits what a GPU machine's call carries (64 MiB). The
# engine dequantizes them when it loads the model: the GPU multiplies f16
# weights either way, and `--block-quant` requantizes them to Q4_0.
#
#   tools/gpu-prepare.sh            # PROFILE=dev reuses the test build instead
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
dir=out/gpu
data=/usr/share/datasets/fashion-mnist

[ -f $data/t10k-images-idx3-ubyte.gz ] || {
  echo "tools/gpu-prepare.sh: $data is missing: install the Debian package dataset-fashion-mnist" >&2
  exit 1
}
. tools/bench/vit_ti.sh
vit_ti_exports

cargo build --locked --profile "$profile" -p edgevit
target=target/$profile
[ "$profile" = dev ] && target=target/debug
rm -rf $dir
mkdir -p $dir/fashion-mnist
cp $target/edgevit $dir/edgevit
strip $dir/edgevit
cp $data/t10k-images-idx3-ubyte.gz $data/t10k-labels-idx1-ubyte.gz $dir/fashion-mnist/
vit_ti_bundle $dir/edgevit ggem-int8 $dir/vit-ti-ggem-int8
echo "tools/gpu-prepare.sh: carry $dir ($(du -sh $dir | cut -f1)), then run tools/gpu-check.sh"
