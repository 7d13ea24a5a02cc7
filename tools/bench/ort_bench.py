"""Time onnxruntime on an ONNX image classifier: median and p99 latency of
ITERATIONS runs of BATCH images (default 1) after a warm-up, on THREADS
intra-op threads.

    python tools/bench/ort_bench.py MODEL.onnx THREADS ITERATIONS [BATCH]
prints one JSON object.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    path, threads, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [batch] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(5):
        sess.run(None, {inp.name: x})
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    p99 = times[min(len(times) - 1, int(np.ceil(0.99 * len(times))) - 1)]
    print(json.dumps({"runtime": f"onnxruntime {ort.__version__}", "threads": threads, "batch": batch,
                      "p50_ms": times[len(times) // 2], "p99_ms": p99}))


if __name__ == "__main__":
    main()
