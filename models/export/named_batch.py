"""tests/data/timm-vit-named-batch/: the timm-vit fixture after ONNX shape
inference, as many exporters and tools leave their models: every
intermediate tensor's value_info carries a named batch dimension
(`batch_size` or the `unk__N` symbols onnx makes up for it).
onnxruntime's logits for the fixture's image, alone and in a batch of 4.

Needs only onnx, onnxruntime, numpy and pillow (models/export/requirements.txt);
run after fixtures.py has written tests/data/timm-vit/:

    python models/export/named_batch.py
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from preprocess import load, preprocess

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests/data"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def main():
    src = DATA / "timm-vit"
    out = DATA / "timm-vit-named-batch"
    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(src / "model.onnx")
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch_size"
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    named = [v.name for v in model.graph.value_info
             if v.type.tensor_type.shape.dim and v.type.tensor_type.shape.dim[0].dim_param]
    assert len(named) > 50, f"expected shape inference to name the batch on most tensors, got {len(named)}"
    data = model.SerializeToString()
    (out / "model.onnx").write_bytes(data)
    x = preprocess(load(src / "image.png"), 224, 224, 3, IMAGENET_MEAN, IMAGENET_STD)[None]
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    one = sess.run(None, {"input": x})[0][0]
    four = sess.run(None, {"input": np.repeat(x, 4, axis=0)})[0]
    assert np.abs(four - one).max() < 1e-5
    (out / "expected.json").write_text(json.dumps({"onnxruntime_logits": one.tolist(),
                                                    "value_info_with_a_named_batch": len(named),
                                                    "onnxruntime": ort.__version__}, indent=1) + "\n")


if __name__ == "__main__":
    main()
