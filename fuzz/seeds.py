"""Writes the seed corpora of fuzz/corpus/<target>/ from the repository's
real files, plus small inputs made for the targets that need them (a tiny
bundle tar, short clips, camera frames, tiny ONNX models).

    .venv/bin/python fuzz/seeds.py

Deterministic. Needs Pillow and onnx (models/export/requirements.txt).
"""

import hashlib
import io
import shutil
import struct
import tarfile
from pathlib import Path

from onnx import TensorProto, helper
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS = HERE / "corpus"
BUNDLES = [ROOT / "models/fmnist-vit-ggem", ROOT / "models/fmnist-vit-ggem-int8"]
SAMPLES = sorted((ROOT / "models/samples/fashion-mnist").glob("*.png"))


def write(target, name, data):
    path = CORPUS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def tar_of(files):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def tiny_bundle():
    """A bundle whose payload is a few bytes: enough for the tar and
    manifest checks, which do not look inside the model."""
    model, labels = b"not a model", b"a\nb\n"
    entry = lambda b: f'size = {len(b)}\nsha256 = "{hashlib.sha256(b).hexdigest()}"\n'
    manifest = (
        'format = 1\nname = "tiny"\nversion = 1\ncompatible = ["any"]\n\n'
        "[input]\nwidth = 4\nheight = 4\nchannels = 1\nmean = [0.5]\nstd = [0.5]\nlayout = \"nchw\"\n\n"
        '[model]\nfile = "model.onnx"\nprecision = "fp32"\nclasses = 2\n\n[labels]\nfile = "labels.txt"\n\n'
        f'[files."model.onnx"]\n{entry(model)}\n[files."labels.txt"]\n{entry(labels)}'
    ).encode()
    return tar_of([("manifest.toml", manifest), ("model.onnx", model), ("labels.txt", labels)])


def y4m(width, height, colourspace, frames, extra=""):
    chroma = {"420jpeg": (width // 2) * (height // 2) * 2, "444": width * height * 2}[colourspace]
    header = f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C{colourspace}{extra}\n".encode()
    body = b"".join(b"FRAME\n" + bytes((i * 7 + j) % 256 for j in range(width * height + chroma)) for i in range(frames))
    return header + body


def jpeg(image, quality=80):
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def onnx_model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "seed", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    for b in BUNDLES:
        signed = (b / "manifest.sig").read_bytes() + (b / "manifest.toml").read_bytes()
        write("manifest", b.name, signed)
    write("manifest", "unsigned", b"\n" + (BUNDLES[0] / "manifest.toml").read_bytes())

    channel = (
        b'format = 1\nname = "fmnist-vit-ggem"\nversion = 2\nbundle = "fmnist-vit-ggem-2.tar"\nsize = 640512\n'
        b'sha256 = "' + b"0123456789abcdef" * 4 + b'"\nexpires = "2030-01-01T00:00:00Z"\n'
    )
    write("channel", "channel", b"00" * 64 + b"\n" + channel)
    write("channel", "absolute-url", b"\n" + channel.replace(b'"fmnist-vit-ggem-2.tar"', b'"https://cdn.example/m.tar"'))
    write("channel", "rollout", b"\n" + channel + b'rollout = 0.1\nrollout_devices = ["' + b"0123456789abcdef" * 2 + b'"]\n')

    write("bundle_tar", "tiny.tar", tiny_bundle())

    for i, s in enumerate(SAMPLES[:8]):
        write("image", s.name, s.read_bytes())
    first = Image.open(SAMPLES[0])
    write("image", "sample.jpg", jpeg(first.convert("RGB")))
    write("image", "sample-gray.jpg", jpeg(first.convert("L")))
    write("image", "rgba.png", (lambda o: (first.convert("RGBA").save(o, "PNG"), o.getvalue())[1])(io.BytesIO()))

    write("y4m", "420jpeg.y4m", y4m(16, 16, "420jpeg", 2))
    write("y4m", "444-full.y4m", y4m(16, 16, "444", 1, " XCOLORRANGE=FULL"))

    yuyv = bytes((i * 13) % 256 for i in range(16 * 8 * 2))
    write("camera_frame", "yuyv-16x8", bytes([0, 15, 7, 0]) + yuyv)
    small = first.convert("RGB").resize((16, 8))
    write("camera_frame", "mjpeg-16x8", bytes([1, 15, 7, 0]) + jpeg(small))

    for board in sorted((ROOT / "boards").glob("*.toml")):
        write("board", board.name, board.read_bytes())

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 10], [0.1 * i for i in range(10)])
    pooled = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["y"]),
    ]
    write("onnx", "pool-matmul.onnx", onnx_model(pooled, [x], [y], [w]))
    k = helper.make_tensor("k", TensorProto.FLOAT, [10, 1, 7, 7], [0.01] * 490)
    conv = [
        helper.make_node("Conv", ["x", "k"], ["c"], strides=[7, 7]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Softmax", ["m"], ["y"], axis=1),
    ]
    write("onnx", "conv-softmax.onnx", onnx_model(conv, [x], [y], [k]))


if __name__ == "__main__":
    main()
