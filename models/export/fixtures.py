"""Test fixtures for the Rust suite, written under tests/data/:

  preprocess/   images and the tensors models/export/preprocess.py makes of them
  ggem/         a PyTorch GGeM module written the obvious way, exported by plain
                torch.onnx.export at opsets 14 to 18, static and dynamic batch,
                with and without constant folding; plus near misses the fusion
                must leave alone
  timm-vit/     a timm ViT exported by plain torch.onnx.export (random weights,
                2 blocks instead of 12 to stay small, dynamic batch), an RGB
                test image and onnxruntime's logits for it
  vit-heads/    small timm ViTs (2 blocks, 48 channels, 3 heads, 197 tokens)
                with each head users export: timm's class token, mean
                pooling, GGeM; random biases and LayerNorm weights; and
                onnxruntime's logits for the timm-vit test image
  dequantize-linear/
                the shipped int8 model with each weight's Cast + Mul written
                as one ONNX DequantizeLinear (per-axis scale, zero point 0)

    python models/export/fixtures.py [NAME...]    # all, or: ggem preprocess timm-vit vit-heads
                                                   #   dequantize-linear
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

from heads import headed
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


def vit_heads():
    image = DATA / "timm-vit" / "image.png"
    x = preprocess(load(image), 224, 224, 3, IMAGENET_MEAN, IMAGENET_STD)[None]
    for head in ("token", "mean", "ggem"):
        out = DATA / "vit-heads" / head
        out.mkdir(parents=True, exist_ok=True)
        model = headed(head, depth=2, embed_dim=48, num_heads=3, num_classes=10)
        buf = io.BytesIO()
        torch.onnx.export(model, torch.randn(1, 3, 224, 224), buf, opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        (out / "model.onnx").write_bytes(buf.getvalue())
        sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
        logits = sess.run(None, {"input": x})[0][0]
        (out / "expected.json").write_text(json.dumps({"onnxruntime_logits": logits.tolist(),
                                                        "onnxruntime": ort.__version__}, indent=1) + "\n")


def dequantize_linear():
    from onnx import helper, numpy_helper

    proto = onnx.load(ROOT / "models/fmnist-vit-ggem-int8/model.onnx")
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    nodes = []
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in inits:
            continue  # a weight's: folded into the DequantizeLinear of the Mul that reads it
        cast = producers.get(node.input[0]) if node.op_type == "Mul" else None
        if cast is None or cast.op_type != "Cast" or cast.input[0] not in inits:
            nodes.append(node)
            continue
        q, scale = inits[cast.input[0]], numpy_helper.to_array(inits[node.input[1]])
        axis = next(i for i, d in enumerate(scale.shape) if d != 1) if scale.size > 1 else 0
        graph.initializer.remove(inits[node.input[1]])
        flat, zero = node.input[1] + "_axis", node.input[1] + "_zero"
        graph.initializer.extend([numpy_helper.from_array(scale.reshape(-1), flat),
                                  numpy_helper.from_array(np.zeros(scale.size, np.int8), zero)])
        nodes.append(helper.make_node("DequantizeLinear", [q.name, flat, zero], list(node.output), axis=axis))
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    out = DATA / "dequantize-linear"
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, out / "model.onnx")


class GeMGroups(torch.nn.Module):
    """GGeM as a user would write it: p per group, expanded to channels in forward."""

    def __init__(self, dim, groups, eps=1e-6, expand="repeat", data_p=False):
        super().__init__()
        self.groups, self.eps, self.expand, self.data_p = groups, eps, expand, data_p
        self.p = torch.nn.Parameter(torch.linspace(1.5, 4.0, groups))

    def forward(self, x):
        c = x.shape[-1]
        if self.expand == "repeat":
            p = self.p.repeat_interleave(c // self.groups)
        else:
            p = self.p.view(self.groups, 1).expand(self.groups, c // self.groups).reshape(c)
        if self.data_p:
            p = p + x.abs().mean()
        return x.clamp(min=self.eps).pow(p).mean(dim=1).pow(1.0 / p)


class TinyHead(torch.nn.Module):
    """tokens [B, N, 16] -> linear -> GGeM over tokens 1.. -> linear -> 5 logits."""

    def __init__(self, **ggem):
        super().__init__()
        self.proj = torch.nn.Linear(16, 32)
        self.pool = GeMGroups(32, 4, **ggem)
        self.head = torch.nn.Linear(32, 5)

    def forward(self, x):
        x = self.proj(x)
        return self.head(self.pool(x[:, 1:]))


def ggem_exports():
    out = DATA / "ggem"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.onnx"):
        old.unlink()
    torch.manual_seed(0)
    index = []
    cases = [(f"opset{o}-{b}-{e}{'-folded' if f else ''}", dict(), o, b, f, e, True)
             for o in (14, 16, 17, 18) for b in ("static", "dynamic") for f in (True, False)
             for e in ("repeat", "expand") if not (o == 16 and e == "expand")]
    cases += [("near-miss-eps-zero", dict(eps=0.0), 17, "static", True, "repeat", False),
              ("near-miss-data-exponents", dict(data_p=True), 17, "static", True, "repeat", False)]
    for name, extra, opset, batch, fold, expand, fuses in cases:
        model = TinyHead(expand=expand, **extra).eval()
        buf = io.BytesIO()
        dynamic = {"tokens": {0: "batch"}, "logits": {0: "batch"}} if batch == "dynamic" else None
        torch.onnx.export(model, torch.randn(2, 9, 16), buf, opset_version=opset, dynamo=False,
                          do_constant_folding=fold, input_names=["tokens"], output_names=["logits"],
                          dynamic_axes=dynamic)
        (out / f"{name}.onnx").write_bytes(buf.getvalue())
        index.append(dict(file=f"{name}.onnx", shape=[2, 9, 16], fuses=fuses))
    (out / "cases.json").write_text(json.dumps(index, indent=1) + "\n")


if __name__ == "__main__":
    import sys

    fixtures = {"ggem": ggem_exports, "preprocess": preprocess_cases, "timm-vit": timm_vit, "vit-heads": vit_heads,
                "dequantize-linear": dequantize_linear}
    for name in sys.argv[1:] or fixtures:
        fixtures[name]()
