# Sourced by tools/bench-cpu.sh and tools/gpu-prepare.sh, from the
# repository root: ViT-Ti/16-224 exported by tools/bench/vit_ti.py into
# out/bench/ (in .venv/, installed from models/export/requirements.txt when
# missing), and bundles of those exports.

# The exports, made once.
vit_ti_exports() {
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import timm, onnx, onnxruntime" 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install -q -r models/export/requirements.txt
  fi
  [ -f out/bench/vit-ti-token.onnx ] && [ -f out/bench/vit-ti-ggem-ort-int8.onnx ] ||
    .venv/bin/python tools/bench/vit_ti.py out/bench
}

# vit_ti_bundle EDGEVIT MODEL OUT: a fresh bundle in OUT of
# out/bench/vit-ti-MODEL.onnx (MODEL: token, mean, ggem or ggem-int8).
vit_ti_bundle() {
  local precision=fp32
  [ "$2" = ggem-int8 ] && precision=int8
  rm -rf "$3"
  "$1" bundle create --model "out/bench/vit-ti-$2.onnx" --labels out/bench/labels.txt \
    --name "vit-ti-$2" --version 1 --width 224 --height 224 --precision $precision \
    --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \
    --golden-image out/bench/image.png --out "$3" >/dev/null
}
