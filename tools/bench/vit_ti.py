"""Export ViT-Ti/16-224 (timm, random weights, seed 0) with timm's class-token
head, a mean-pooling head and a GGeM head (3 groups = heads, p from 2 to 4),
as plain torch.onnx.export writes them (opset 17, dynamic batch), the GGeM one also
with int8 weights (models/export's per-channel scheme) and as onnxruntime's
dynamic int8 quantization makes it (`quantize_dynamic`, int8 weights per
channel, activations quantized at run time), plus ImageNet-style
labels and one test image, into OUT. The models are models/export/heads.py's,
biases and LayerNorm weights drawn at random.

    python tools/bench/vit_ti.py OUT
"""

import io
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models" / "export"))
from export import quantize_weights  # noqa: E402
from heads import headed  # noqa: E402


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for pooling in ("token", "mean", "ggem"):
        model = headed(pooling, num_classes=1000)
        buf = io.BytesIO()
        torch.onnx.export(model, torch.randn(1, 3, 224, 224), buf, opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        (out / f"vit-ti-{pooling}.onnx").write_bytes(buf.getvalue())
    int8 = quantize_weights(onnx.load_from_string((out / "vit-ti-ggem.onnx").read_bytes()))
    (out / "vit-ti-ggem-int8.onnx").write_bytes(int8.SerializeToString())
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(out / "vit-ti-ggem.onnx", out / "vit-ti-ggem-ort-int8.onnx", per_channel=True,
                     weight_type=QuantType.QInt8)
    (out / "labels.txt").write_text("".join(f"class {i}\n" for i in range(1000)))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), "RGB").save(out / "image.png")


if __name__ == "__main__":
    main()
