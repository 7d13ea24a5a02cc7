"""onnxruntime's logits for one image, preprocessed as edgevit does
(models/export/preprocess.py), as JSON: the reference of the whole-model
parity check in tools/bench-cpu.sh.

    python tools/bench/parity.py MODEL.onnx IMAGE WIDTH HEIGHT
"""

import json
import sys
from pathlib import Path

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models" / "export"))
from preprocess import load, preprocess  # noqa: E402

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def main():
    model, image, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    x = preprocess(load(image), width, height, 3, IMAGENET_MEAN, IMAGENET_STD)[None]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0][0]
    print(json.dumps({"logits": logits.tolist()}))


if __name__ == "__main__":
    main()
