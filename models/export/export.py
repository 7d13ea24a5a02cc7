"""Export a trained checkpoint as the edgevit default bundles.

    python models/export/export.py --checkpoint models/export/runs/ggem.pt

Writes, relative to the repository root:
  models/fmnist-vit-ggem/        fp32 bundle (ONNX opset 17, golden I/O from PyTorch)
  models/fmnist-vit-ggem-int8/   int8 weights per output channel (golden I/O from onnxruntime)
  models/samples/fashion-mnist/  20 test-set images, two per class
and prints the 10k test accuracy of PyTorch fp32, onnxruntime fp32 and int8.
"""

import argparse
import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper, TensorProto
from PIL import Image

import bundle
from preprocess import load, preprocess
from train import DATA, MEAN, STD
from vit import ViT, read_idx

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
          "Ankle boot"]
OPSET = 17
KEY = ROOT / "models/keys/dev-test-only.key"
COMMAND = "models/export/export.py --checkpoint models/export/runs/ggem.pt"


def export_onnx(model):
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), buf, opset_version=OPSET, dynamo=False,
                      input_names=["image"], output_names=["logits"], do_constant_folding=True,
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    return proto


def quantize_weights(proto):
    """Weights of MatMul, Gemm and Conv become int8 with one float scale per
    output channel (symmetric, round to nearest), dequantized in the graph by
    Cast + Mul, so any ONNX runtime loads the model unchanged."""
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    uses = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, i))
    new_nodes = []
    for name, consumers in uses.items():
        if name not in inits or len(consumers) != 1:
            continue
        node, i = consumers[0]
        w = numpy_helper.to_array(inits[name])
        if i != 1 or w.dtype != np.float32 or w.ndim < 2:
            continue
        if node.op_type == "MatMul":
            axis = w.ndim - 1
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if trans_b else 1
        elif node.op_type == "Conv":
            axis = 0
        else:
            continue
        others = tuple(a for a in range(w.ndim) if a != axis)
        amax = np.abs(w).max(axis=others, keepdims=True)
        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                                  numpy_helper.from_array(scale, name + "_scale")])
        new_nodes += [helper.make_node("Cast", [name + "_int8"], [name + "_dq"], to=TensorProto.FLOAT,
                                       name=name + "_cast"),
                      helper.make_node("Mul", [name + "_dq", name + "_scale"], [name], name=name + "_dequant")]
    for n in reversed(new_nodes):
        graph.node.insert(0, n)
    onnx.checker.check_model(proto)
    return proto


def compact_names(proto):
    """Short value names and no node names: the graph is the same, the file smaller."""
    graph = proto.graph
    keep = {v.name for v in list(graph.input) + list(graph.output)}
    inits = {t.name for t in graph.initializer}
    names = {}

    def short(name):
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = (f"w{len(names)}" if name in inits else f"t{len(names)}")
        return names[name]

    for t in graph.initializer:
        t.name = short(t.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    onnx.checker.check_model(proto)
    return proto


def ort_logits(proto_bytes, x, batch=1000):
    sess = ort.InferenceSession(proto_bytes, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"image": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    ckpt = torch.load(args.checkpoint, weights_only=False)
    cfg = ckpt["config"]
    model = ViT(**cfg)
    model.load_state_dict(ckpt["state"])
    model.eval()

    images = read_idx(DATA / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(DATA / "t10k-labels-idx1-ubyte.gz")
    x_all = ((images.astype(np.float32) / np.float32(255) - np.float32(MEAN)) / np.float32(STD))[:, None]

    # Samples: the first two test images of each class, in test-set order.
    picks = sorted(i for c in range(10) for i in np.flatnonzero(labels == c)[:2])
    sample_dir = ROOT / "models/samples/fashion-mnist"
    sample_dir.mkdir(parents=True, exist_ok=True)
    for old in sample_dir.glob("*.png"):
        old.unlink()
    names = []
    for i in picks:
        slug = LABELS[labels[i]].lower().replace("/", "-").replace(" ", "-")
        path = sample_dir / f"t10k-{i:05d}-{slug}.png"
        Image.fromarray(images[i], mode="L").save(path, optimize=True)
        names.append(path)
    golden_x = np.stack([preprocess(load(p), 28, 28, 1, [MEAN], [STD]) for p in names]).astype(np.float32)
    assert np.array_equal(golden_x, x_all[picks]), "PNG round trip changed the samples"

    with torch.no_grad():
        torch_logits = torch.cat([model(torch.from_numpy(x_all[i:i + 1000])) for i in range(0, 10000, 1000)]).numpy()
        golden_torch = model(torch.from_numpy(golden_x)).numpy()
    fp32 = export_onnx(model)
    int8 = quantize_weights(onnx.ModelProto.FromString(fp32.SerializeToString()))
    fp32_bytes = compact_names(fp32).SerializeToString()
    int8_bytes = compact_names(int8).SerializeToString()
    ort_fp32 = ort_logits(fp32_bytes, x_all)
    ort_int8 = ort_logits(int8_bytes, x_all)
    golden_int8 = ort_logits(int8_bytes, golden_x)

    acc = lambda logits: float((logits.argmax(1) == labels).mean() * 100)
    report = {
        "pytorch_fp32": acc(torch_logits), "onnxruntime_fp32": acc(ort_fp32), "onnxruntime_int8": acc(ort_int8),
        "max_abs_diff_onnx_vs_pytorch": float(np.abs(ort_fp32 - torch_logits).max()),
        "fp32_bytes": len(fp32_bytes), "int8_bytes": len(int8_bytes),
        "int8_over_fp32": len(int8_bytes) / len(fp32_bytes),
        "samples_top1_fp32": golden_torch.argmax(1).tolist(), "samples_top1_int8": golden_int8.argmax(1).tolist(),
        "samples_label": labels[picks].tolist(),
        "p": ckpt["result"].get("p"),
    }

    labels_txt = ("\n".join(LABELS) + "\n").encode()
    input_spec = dict(width=28, height=28, channels=1, mean=[MEAN], std=[STD], layout="nchw")
    for suffix, precision, onnx_bytes, golden_logits in [("", "fp32", fp32_bytes, golden_torch),
                                                          ("-int8", "int8", int8_bytes, golden_int8)]:
        out = ROOT / f"models/fmnist-vit-ggem{suffix}"
        model_spec = dict(file="model.onnx", precision=precision, classes=10, arch="vit", patch=cfg["patch"],
                          dim=cfg["dim"], heads=cfg["heads"], depth=cfg["depth"], pooling=cfg["pooling"],
                          groups=cfg["heads"] if cfg["pooling"] == "ggem" else 1)
        # int8: what the int8 kernels of different CPUs may differ by, as `bundle create` sets it
        # (runtime/src/create.rs, INT8_TOLERANCE_SHARE).
        tolerance = 1e-4 if precision == "fp32" else float(np.float32(0.05) * np.abs(golden_logits).max())
        golden = {"input": "golden/input.bin", "logits": "golden/logits.bin", "count": len(picks),
                  "top1": golden_logits.argmax(1).tolist(), "tolerance": tolerance}
        files = {"model.onnx": onnx_bytes, "labels.txt": labels_txt,
                 "golden/input.bin": golden_x.astype("<f4").tobytes(),
                 "golden/logits.bin": golden_logits.astype("<f4").tobytes()}
        description = (f"ViT patch {cfg['patch']}, dim {cfg['dim']}, depth {cfg['depth']}, {cfg['heads']} heads, "
                       f"GGeM pooling, Fashion-MNIST; {precision} weights")
        bundle.write_bundle(out, f"fmnist-vit-ggem{suffix}", 1, description, input_spec, model_spec, golden,
                            files, KEY, COMMAND)
    (ROOT / "models/export/runs/export.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
