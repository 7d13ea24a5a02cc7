"""Test fixtures for the Rust suite, written under tests/data/:

  preprocess/   images and the tensors models/export/preprocess.py makes of them
  timm-vit/     a timm ViT exported by plain torch.onnx.export (random weights,
                2 blocks instead of 12 to stay small, dynamic batch), an RGB
                test image and onnxruntime's logits for it

    python models/export/fixtures.py
"""

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import timm
import torch
from PIL import Image

from preprocess import load, preprocess

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/data"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def test_image(w, h, seed, mode):
    """A smooth gradient plus noise: every interpolation weight matters."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) * 127 / max(w + h - 2, 1)], -1)
    px = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(px, "RGB")
    return img.convert("L") if mode == "L" else img


def preprocess_cases():
    out = DATA / "preprocess"
    out.mkdir(parents=True, exist_ok=True)
    cases = [
        ("rgb-64x48.png", (64, 48, 1, "RGB"), dict(width=28, height=28, channels=1, mean=[0.286], std=[0.353], layout="nchw")),
        ("rgb-64x48.png", (64, 48, 1, "RGB"), dict(width=20, height=24, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, layout="nchw")),
        ("gray-37x53.png", (37, 53, 2, "L"), dict(width=28, height=28, channels=1, mean=[0.5], std=[0.25], layout="nchw")),
        ("gray-37x53.png", (37, 53, 2, "L"), dict(width=16, height=16, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, layout="nhwc")),
        ("rgb-12x10.png", (12, 10, 3, "RGB"), dict(width=30, height=20, channels=3, mean=[0, 0, 0], std=[1, 1, 1], layout="nhwc")),
    ]
    index = []
    for i, (name, (w, h, seed, mode), spec) in enumerate(cases):
        path = out / name
        test_image(w, h, seed, mode).save(path)
        tensor = preprocess(load(path), **spec)
        expected = f"case{i}.bin"
        (out / expected).write_bytes(tensor.astype("<f4").tobytes())
        index.append(dict(image=name, expected=expected, **spec))
    (out / "cases.json").write_text(json.dumps(index, indent=1) + "\n")


def timm_vit():
    out = DATA / "timm-vit"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, num_classes=10).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), buf, opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    (out / "model.onnx").write_bytes(buf.getvalue())
    (out / "labels.txt").write_text("".join(f"class {i}\n" for i in range(10)))
    test_image(160, 120, 7, "RGB").save(out / "image.png")
    x = preprocess(load(out / "image.png"), 224, 224, 3, IMAGENET_MEAN, IMAGENET_STD)[None]
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": x})[0][0]
    (out / "expected.json").write_text(json.dumps({"onnxruntime_logits": logits.tolist(),
                                                    "onnxruntime": ort.__version__}, indent=1) + "\n")


if __name__ == "__main__":
    preprocess_cases()
    timm_vit()
