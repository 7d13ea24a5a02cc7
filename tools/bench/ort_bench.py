"""Time onnxruntime on an ONNX image classifier: median and p99 latency of
ITERATIONS runs at batch 1 after a warm-up, on THREADS intra-op threads.

    python tools/bench/ort_bench.py MODEL.onnx THREADS ITERATIONS
prints one JSON object.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    path, threads, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in inp.shape]
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
    print(json.dumps({"runtime": f"onnxruntime {ort.__version__}", "threads": threads,
                      "p50_ms": times[len(times) // 2], "p99_ms": p99}))


if __name__ == "__main__":
    main()
