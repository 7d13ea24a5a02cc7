"""Export ViT-Ti/16-224 (timm, random weights, seed 0) with timm's class-token
head, a mean-pooling head and a GGeM head (3 groups = heads, p from 2 to 4),
as plain
torch.onnx.export writes them (opset 17, dynamic batch), the GGeM one also
with int8 weights (models/export's per-channel scheme), plus ImageNet-style
labels and one test image, into OUT. timm initializes every bias to 0 and
every LayerNorm to the identity, which a trained model never is and which
tract folds away, so those are drawn at random too (normal, std 0.02).

    python tools/bench/vit_ti.py OUT
"""

import io
import sys
from pathlib import Path

import numpy as np
import onnx
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models" / "export"))
from export import quantize_weights  # noqa: E402


class Pooled(torch.nn.Module):
    def __init__(self, pooling):
        super().__init__()
        self.vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000)
        self.pooling = pooling
        self.p = torch.nn.Parameter(torch.tensor([2.0, 3.0, 4.0]))

    def forward(self, x):
        features = self.vit.forward_features(x)
        if self.pooling == "token":
            return self.vit.forward_head(features)
        tokens = features[:, 1:]
        if self.pooling == "mean":
            pooled = tokens.mean(dim=1)
        else:
            p = self.p.repeat_interleave(tokens.shape[-1] // 3)
            pooled = tokens.clamp(min=1e-6).pow(p).mean(dim=1).pow(1.0 / p)
        return self.vit.head(pooled)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for pooling in ("token", "mean", "ggem"):
        torch.manual_seed(0)
        model = Pooled(pooling).eval()
        with torch.no_grad():
            for name, param in model.vit.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    param.add_(torch.randn_like(param) * 0.02)
        buf = io.BytesIO()
        torch.onnx.export(model, torch.randn(1, 3, 224, 224), buf, opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        (out / f"vit-ti-{pooling}.onnx").write_bytes(buf.getvalue())
    int8 = quantize_weights(onnx.load_from_string((out / "vit-ti-ggem.onnx").read_bytes()))
    (out / "vit-ti-ggem-int8.onnx").write_bytes(int8.SerializeToString())
    (out / "labels.txt").write_text("".join(f"class {i}\n" for i in range(1000)))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), "RGB").save(out / "image.png")


if __name__ == "__main__":
    main()
