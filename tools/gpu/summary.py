"""The one table of tools/gpu-check.sh: each goal of the GPU path, what the
check measured for it, and whether it was met, read from the files the two
halves wrote into OUT (ggem_results.json, samples-*.jsonl, bench.jsonl,
eval-*.json). A goal whose inputs are missing (a step failed or was
skipped) is listed as not measured.

    python tools/gpu/summary.py OUT
"""

import json
import sys
from pathlib import Path


def load(path, lines=False):
    try:
        text = path.read_text()
        return [json.loads(l) for l in text.splitlines() if l.strip()] if lines else json.loads(text)
    except (OSError, ValueError):
        return None


def kernel_rows(out):
    results = load(out / "ggem_results.json")
    timing = None
    if results:
        timing = next((t for t in results.get("timings", [])
                       if t["shape"] == [64, 196, 768] and t["dtype"] == "f16"), None)
    if timing is None:
        return [("GGeM [64, 196, 768] f16, GB/s of a copy", None, ">= 85%", None),
                ("GGeM [64, 196, 768] f16, speedup on PyTorch eager", None, ">= 10x", None)]
    return [
        ("GGeM [64, 196, 768] f16, GB/s of a copy",
         f"{timing['kernel_gbps']:.0f} of {timing['copy_gbps']:.0f} GB/s = {100 * timing['vs_copy']:.0f}%",
         ">= 85%", timing["vs_copy"] >= 0.85),
        ("GGeM [64, 196, 768] f16, speedup on PyTorch eager",
         f"{timing['peer_us']:.2f} / {timing['kernel_us']:.2f} us = {timing['vs_peer']:.1f}x",
         ">= 10x", timing["vs_peer"] >= 10),
    ]


def bench_rows(out):
    rows = load(out / "bench.jsonl", lines=True) or []
    peer = {r["batch"]: r for r in rows if r.get("runtime", "").startswith("pytorch")}
    ours = {r["batch"]: r for r in rows
            if r.get("backend") == "cuda" and r.get("float") == "f16" and not r.get("block_quant")}
    table = []
    for batch, goal in [(1, 0.5), (32, None)]:
        name = f"ViT-Ti f16 batch {batch}, p50 edgevit cuda / PyTorch eager"
        if batch in peer and batch in ours:
            ratio = ours[batch]["p50_ms"] / peer[batch]["p50_ms"]
            measured = f"{ours[batch]['p50_ms']:.3f} / {peer[batch]['p50_ms']:.3f} ms = {ratio:.2f}"
            table.append((name, measured, f"<= {goal}" if goal else "report", ratio <= goal if goal else "reported"))
        else:
            table.append((name, None, f"<= {goal}" if goal else "report", None))
    return table


def agreement_rows(out):
    gpu = load(out / "samples-cuda.jsonl", lines=True)
    cpu = load(out / "samples-cpu.jsonl", lines=True)
    name = "samples: top-1 of GPU f16 equals CPU f32"
    if not gpu or not cpu or len(gpu) != len(cpu):
        table = [(name, None, "every sample", None)]
    else:
        agree = sum(g["top_k"][0]["class"] == c["top_k"][0]["class"] for g, c in zip(gpu, cpu))
        table = [(name, f"{agree}/{len(cpu)}", "every sample", agree == len(cpu))]
    run, ref = load(out / "eval-cuda.json"), load(out / "eval-cpu.json")
    name = "Fashion-MNIST 10k: GPU f16 against CPU f32"
    if run and ref:
        d = run["accuracy"] - ref["accuracy"]
        measured = f"{run['accuracy']:.2f}% vs {ref['accuracy']:.2f}% ({d:+.2f} pt)"
        table.append((name, measured, "within 0.3 pt", abs(d) <= 0.3))
    else:
        table.append((name, None, "within 0.3 pt", None))
    return table


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    rows = kernel_rows(out) + bench_rows(out) + agreement_rows(out)
    print("\n| goal | measured | target | met |")
    print("|---|---|---|---|")
    for name, measured, target, met in rows:
        verdict = "not measured" if met is None else met if isinstance(met, str) else ("yes" if met else "no")
        print(f"| {name} | {measured or '-'} | {target} | {verdict} |")
    return 0 if all(met is True or met == "reported" for *_, met in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
