"""Writes the hostile-input corpus of tests/hostile/ (files the runtime must
refuse with one clear line, no panic and bounded memory).

Run from the repository root with the export environment:

    .venv/bin/python tests/hostile/generate.py

Deterministic: the same script writes the same bytes. Needs Pillow (JPEG)
and onnx (models), both in models/export/requirements.txt.
"""

import io
import random
import struct
import tarfile
import zlib
from pathlib import Path

from onnx import TensorProto, helper
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SAMPLE = ROOT / "models/samples/fashion-mnist/t10k-00000-ankle-boot.png"
BUNDLE = ROOT / "models/fmnist-vit-ggem"
DEPTH = 20000
rng = random.Random(20261128)


def write(name, data):
    path = HERE / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width, height, color_type, idat):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_bytes():
    out = io.BytesIO()
    Image.open(SAMPLE).convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def tar_bytes(entries):
    """entries: (name, type, data, linkname), written as GNU tar."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data, link in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.linkname = link
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return out.getvalue()


def rewrite_header(tar, offset, edit):
    """Edits the 512-byte header at `offset` and fixes its checksum."""
    tar = bytearray(tar)
    edit(tar, offset)
    tar[offset + 148 : offset + 156] = b" " * 8
    tar[offset + 148 : offset + 156] = b"%06o\0 " % sum(tar[offset : offset + 512])
    return bytes(tar)


def manifest_entries():
    return [
        ("manifest.toml", tarfile.REGTYPE, (BUNDLE / "manifest.toml").read_bytes(), ""),
        ("manifest.sig", tarfile.REGTYPE, (BUNDLE / "manifest.sig").read_bytes(), ""),
    ]


def onnx_model(graph):
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def main():
    sample = SAMPLE.read_bytes()
    jpeg = jpeg_bytes()

    # Images, through `classify`.
    write("image-empty.png", b"")
    write("image-truncated.png", sample[: len(sample) * 6 // 10])
    flipped = bytearray(sample)
    flipped[len(sample) // 2] ^= 0x10
    write("image-bitflip.png", bytes(flipped))
    write("image-wrong-magic.png", b"this is not an image\n")
    write("image-huge-dimensions.png", png(100000, 100000, 2, zlib.compress(b"\0" * 64)))
    write("image-over-allocation.png", png(16384, 16384, 6, zlib.compress(b"\0" * 64)))
    write(
        "image-gif.png",
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
        b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
    )
    write("image-truncated.jpg", jpeg[: len(jpeg) // 2])
    sof = jpeg.index(b"\xff\xc0")
    write("image-huge-dimensions.jpg", jpeg[: sof + 5] + struct.pack(">HH", 65000, 65000) + jpeg[sof + 9 :])
    write("image-zero-width.jpg", jpeg[: sof + 5] + struct.pack(">HH", 28, 0) + jpeg[sof + 9 :])

    # Y4M clips, through `run file://CLIP null://`.
    frame = b"FRAME\n" + bytes(16 * 16 * 3 // 2)
    write("clip-empty.y4m", b"")
    write("clip-wrong-magic.y4m", b"YUV4MPEG3 W16 H16\n" + frame)
    write("clip-huge-dimensions.y4m", b"YUV4MPEG2 W100000 H100000 C420jpeg\n" + frame)
    write("clip-truncated-frame.y4m", b"YUV4MPEG2 W16 H16 C420jpeg\n" + frame[:100])
    write("clip-no-frame-line.y4m", b"YUV4MPEG2 W16 H16 C420jpeg\nGARBAGE\n" + bytes(384))
    write("clip-10-bit.y4m", b"YUV4MPEG2 W16 H16 C420p10\n" + frame)
    write("clip-endless-header.y4m", b"YUV4MPEG2 W16 H16 X" + b"A" * 20000)

    # Bundle tarballs, through `bundle verify`.
    real = manifest_entries()
    write("bundle-dotdot.tar", tar_bytes(real + [("../../hostile-escaped", tarfile.REGTYPE, b"x", "")]))
    write("bundle-absolute.tar", tar_bytes(real + [("/tmp/edgevit-hostile-escaped", tarfile.REGTYPE, b"x", "")]))
    write("bundle-symlink.tar", tar_bytes(real + [("model.onnx", tarfile.SYMTYPE, b"", "/etc/passwd")]))
    write("bundle-hardlink.tar", tar_bytes(real + [("model.onnx", tarfile.LNKTYPE, b"", "/etc/passwd")]))
    write("bundle-device.tar", tar_bytes(real + [("model.onnx", tarfile.CHRTYPE, b"", "")]))
    plain = tar_bytes(real + [("model.onnx", tarfile.REGTYPE, bytes(512), "")])
    third = sum(512 + (len(data) + 511) // 512 * 512 for _, _, data, _ in real)  # offset of the third header

    def sparse(t, o):
        t[o + 156] = ord("S")

    def oversized(t, o):
        t[o + 124 : o + 136] = b"\x80" + bytes(5) + (1 << 40).to_bytes(6, "big")  # 1 TiB, base-256

    write("bundle-sparse.tar", rewrite_header(plain, third, sparse))
    write("bundle-oversized-entry.tar", rewrite_header(plain, third, oversized)[: third + 1024])
    write("bundle-truncated.tar", tar_bytes(real)[:700])
    write("bundle-empty.tar", b"")
    deep = b"a = " + b"[" * DEPTH + b"]" * DEPTH + b"\n"
    write("bundle-deep-nesting.tar", tar_bytes([("manifest.toml", tarfile.REGTYPE, deep, "")]))
    unknown = (BUNDLE / "manifest.toml").read_bytes() + b"evil = true\n"
    write("bundle-unknown-field.tar", tar_bytes([("manifest.toml", tarfile.REGTYPE, unknown, ""), real[1]]))
    sig = bytearray(real[1][2])
    sig[10] = ord("0") if sig[10] != ord("0") else ord("1")
    write("bundle-bad-signature.tar", tar_bytes([real[0], ("manifest.sig", tarfile.REGTYPE, bytes(sig), "")]))

    # ONNX models, wrapped by the test into a signed bundle, through `bundle verify`.
    write("model-garbage.onnx", bytes(rng.getrandbits(8) for _ in range(4096)))
    write("model-truncated.onnx", (ROOT / "models/fmnist-vit-ggem-int8/model.onnx").read_bytes()[:3000])
    write("model-empty.onnx", b"")
    flat = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 784])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    w = helper.make_tensor("w", TensorProto.FLOAT, [784, 10], [0.0] * 7840)
    rank2 = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "rank2", [flat], [out], [w])
    write("model-wrong-input-rank.onnx", onnx_model(rank2))
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("ReduceMean", ["b"], ["y"], axes=[2, 3], keepdims=0),
    ]
    write("model-cycle.onnx", onnx_model(helper.make_graph(nodes, "cycle", [image], [out])))
    # Found by the onnx fuzz target: a graph output no node produces made
    # tract panic instead of failing.
    nowhere = helper.make_tensor_value_info("nowhere", TensorProto.FLOAT, [1, 10])
    relu = [helper.make_node("Relu", ["x"], ["r"])]
    write("model-undefined-output.onnx", onnx_model(helper.make_graph(relu, "undefined", [image], [nowhere])))
    # Loads and plans, then indexes out of range at run time: tract's Gather
    # slices its data without a bounds check and panics.
    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 10], [0.0] * 100)
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [1000.0])
    gather = [
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["m", "scale"], ["s"]),
        helper.make_node("Cast", ["s"], ["i"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "i"], ["y"], axis=0),
    ]
    graph = helper.make_graph(gather, "gather", [image], [out], [table, scale])
    write("model-panics-in-inference.onnx", onnx_model(graph))

    # Board profiles, through `boards --board-file FILE --current`.
    write("board-deep-nesting.toml", b"name = " + b"[" * DEPTH + b"]" * DEPTH + b"\n")
    write("board-unknown-field.toml", (ROOT / "boards/jetson-orin-nano.toml").read_bytes() + b"turbo = true\n")
    write("board-binary.toml", bytes(rng.getrandbits(8) for _ in range(2048)))

    # Channels, through `update check --channel file://DIR/channel.toml`.
    write("channel-deep-nesting/channel.toml", b"x = " + b"{a = " * 5000 + b"1" + b"}" * 5000 + b"\n")
    write("channel-deep-nesting/channel.sig", b"00" * 64 + b"\n")
    write(
        "channel-bad-signature/channel.toml",
        b'format = 1\nname = "m"\nversion = 9\nbundle = "m.tar"\nsize = 1\nsha256 = "'
        + b"ab" * 32
        + b'"\nexpires = "2099-01-01T00:00:00Z"\n',
    )
    write("channel-bad-signature/channel.sig", b"zz" * 64 + b"\n")

    # idx data sets, through `eval`.
    write("idx-huge-dimensions.idx", struct.pack(">BBBBIII", 0, 0, 8, 3, 1000000000, 100000, 100000) + bytes(64))
    write("idx-truncated.idx", struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 28, 28) + bytes(100))
    write("idx-wrong-magic.idx", b"\x01\x02\x03\x04" + bytes(60))


if __name__ == "__main__":
    main()
