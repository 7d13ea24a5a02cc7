#!/usr/bin/env bash
# edgevit against onnxruntime on the CPU, on the very same ONNX files, in one
# run on one machine: timm ViT-Ti/16-224 with its class-token head and with
# a GGeM head, batch 1 and 8, 1 and 2 threads; and the GGeM model with int8
# weights, edgevit's int8 products against onnxruntime's dynamic int8
# quantization of the same export and against edgevit in f32.
#
#   tools/bench-cpu.sh [ROUNDS] [ITERATIONS]    # default 3 rounds of 40 (batch 8: a quarter)
#
# What users run is timed: the release binary. Each row runs edgevit and then
# onnxruntime, ROUNDS times over, the rows interleaved round by round, since
# a shared machine's speed can move by a third between two passes; a row
# reports the medians and the median ratio (edgevit / onnxruntime, below 1:
# edgevit is faster) with the spread of the ratio over the rounds. Then
# parity (largest logit difference from onnxruntime on the test image), the
# time by op, the share of the CPU's peak reached, and cold start and peak
# memory. The markdown goes to stdout and into doc/performance.md between
# its bench-cpu markers, with the machine named.
#
# Models are random-weight exports made by tools/bench/vit_ti.py into
# out/bench/ (not committed); onnxruntime and the exporters come from
# models/export/requirements.txt in .venv/, installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
iterations=${2:-40}
out=out/bench
models=(token ggem ggem-int8)
# What onnxruntime runs for each: the same file, but for int8 its own
# dynamic quantization of the f32 export.
ort_model() { [ "$1" = ggem-int8 ] && echo $out/vit-ti-ggem-ort-int8.onnx || echo $out/vit-ti-$1.onnx; }

. tools/bench/vit_ti.sh
vit_ti_exports
cargo build -q --release -p edgevit
edgevit=target/release/edgevit
for model in "${models[@]}" mean; do
  vit_ti_bundle $edgevit $model $out/bundle-$model
done

field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
edgevit_bench() { RUST_LOG=error $edgevit bench --json --skip-signature --warmup 3 "$@" 2>/dev/null; }

# One line per measurement: "model batch threads round edgevit_ms ort_ms".
samples=$out/cpu-samples.txt
: >"$samples"
for round in $(seq "$rounds"); do
  for model in "${models[@]}"; do
    for batch in 1 8; do
      n=$iterations
      [ $batch = 1 ] || n=$(((iterations + 3) / 4))
      for threads in 1 2; do
        e=$(field "$(edgevit_bench --bundle $out/bundle-$model --iterations $n --batch $batch --threads $threads)" p50_ms)
        o=$(field "$(.venv/bin/python tools/bench/ort_bench.py "$(ort_model $model)" $threads $n $batch)" p50_ms)
        echo "$model $batch $threads $round $e $o" >>"$samples"
      done
    done
  done
  echo "round $round of $rounds done" >&2
done

# Parity on the test image: edgevit's logits against onnxruntime's.
parity=""
for model in "${models[@]}"; do
  e=$(RUST_LOG=error $edgevit classify --bundle $out/bundle-$model --skip-signature --json $out/image.png)
  o=$(.venv/bin/python tools/bench/parity.py $out/vit-ti-$model.onnx $out/image.png 224 224)
  parity+="$model $(python3 -c "
import json, sys
e, o = json.loads(sys.argv[1])['logits'], json.loads(sys.argv[2])['logits']
print('%.1e' % max(abs(a - b) for a, b in zip(e, o)))" "$e" "$o")
"
done

# int8 against f32 in edgevit on the samples and the test image: top-1
# agreement and the cosine of the logits.
images=("$out/image.png" models/samples/fashion-mnist/*.png)
for model in ggem ggem-int8; do
  RUST_LOG=error $edgevit classify --bundle $out/bundle-$model --skip-signature --json "${images[@]}" >$out/logits-$model.jsonl
done
agreement=$(python3 - $out/logits-ggem.jsonl $out/logits-ggem-int8.jsonl <<'EOF'
import json, math, sys
f32, int8 = ([json.loads(l)["logits"] for l in open(path)] for path in sys.argv[1:])
top = lambda v: max(range(len(v)), key=v.__getitem__)
cos = [sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v)) for u, v in zip(f32, int8)]
print(f"{sum(top(u) == top(v) for u, v in zip(f32, int8))} {len(f32)} {min(cos):.5f} {sorted(cos)[len(cos) // 2]:.5f}")
EOF
)
sizes="$(stat -c %s $out/vit-ti-ggem-int8.onnx) $(stat -c %s $out/vit-ti-ggem.onnx)"

# What the GGeM head costs, batch 1, 1 thread, one pass: "label p50" lines.
head_rows=""
for row in "edgevit, mean pooling|bundle-mean|" "edgevit, GGeM fused|bundle-ggem|" \
  "edgevit, GGeM as exported (6 ops)|bundle-ggem|--no-fusion"; do
  IFS='|' read -r label bundle flag <<<"$row"
  # shellcheck disable=SC2086 # an empty flag is no argument
  p=$(field "$(edgevit_bench --bundle $out/$bundle --iterations "$iterations" --threads 1 $flag)" p50_ms)
  head_rows+="$label|$p"$'\n'
done
for model in mean ggem; do
  p=$(field "$(.venv/bin/python tools/bench/ort_bench.py $out/vit-ti-$model.onnx 1 "$iterations" 1)" p50_ms)
  head_rows+="onnxruntime, $([ $model = mean ] && echo mean pooling || echo GGeM)|$p"$'\n'
done

ops=$(RUST_LOG=error $edgevit bench --bundle $out/bundle-token --skip-signature --iterations "$iterations" \
  --warmup 3 --threads 1 --ops 2>/dev/null)
cold=$(RUST_LOG=error $edgevit bench --json --skip-signature --bundle $out/bundle-token --iterations 1 --warmup 0)

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
mhz=$(grep -m1 'cpu MHz' /proc/cpuinfo | cut -d: -f2 | xargs)
flags=$(grep -m1 '^flags' /proc/cpuinfo)
isa="AVX2 + FMA"
case "$flags" in *avx512f*) isa="AVX-512" ;; esac
ort=$(.venv/bin/python -c "import onnxruntime; print(onnxruntime.__version__)")

int8=$($edgevit doctor 2>/dev/null | sed -n 's/^int8 *//p')
table=$(python3 - "$samples" "$mhz" "$cpu" "$isa" "$ort" "$rounds" "$iterations" "$parity" "$ops" "$cold" "$head_rows" \
  "$agreement" "$sizes" "$int8" <<'EOF'
import json, statistics, sys
from collections import defaultdict

samples, mhz, cpu, isa, ort, rounds, iterations, parity, ops, cold, head_rows, agreement, sizes, int8 = sys.argv[1:]
rows = defaultdict(list)
for line in open(samples):
    model, batch, threads, _, e, o = line.split()
    rows[(model, int(batch), int(threads))].append((float(e), float(o)))
names = {"token": "class-token head", "ggem": "GGeM head", "ggem-int8": "GGeM head, int8"}
print(f"{cpu} ({isa}), nproc 2, {float(mhz):.0f} MHz; onnxruntime {ort}; release binary; "
      f"{rounds} rounds of {iterations} runs (batch 8: {(int(iterations) + 3) // 4}), p50 per batch.\n")
print("| model | batch | threads | edgevit ms | onnxruntime ms | ratio, median (min-max) |")
print("|---|---|---|---|---|---|")
median = statistics.median
order = list(names)
for (model, batch, threads), s in sorted(rows.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1], kv[0][2])):
    ratios = [e / o for e, o in s]
    print(f"| {names[model]} | {batch} | {threads} | {median(e for e, _ in s):.2f} | {median(o for _, o in s):.2f} "
          f"| {median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
print("\nBatch 1, p50 at 2 threads over p50 at 1 thread, median over the rounds (min-max):\n")
print("| model | edgevit | onnxruntime |")
print("|---|---|---|")
for model in names:
    if (model, 1, 1) not in rows:
        continue
    one, two = rows[(model, 1, 1)], rows[(model, 1, 2)]
    e = [b[0] / a[0] for a, b in zip(one, two)]
    o = [b[1] / a[1] for a, b in zip(one, two)]
    print(f"| {names[model]} | {median(e):.2f} ({min(e):.2f}-{max(e):.2f}) | {median(o):.2f} ({min(o):.2f}-{max(o):.2f}) |")
if ("ggem-int8", 1, 1) in rows:
    print("\nint8 weights: in the int8 rows above onnxruntime runs its own dynamic int8 quantization of the "
          "same export (`quantize_dynamic`, int8 weights per channel); edgevit runs its int8 products on "
          f"{int8.split(' products')[0]}. Ratios per round, median (min-max):\n")
    print("| batch | threads | edgevit int8 / edgevit f32 | edgevit int8 / onnxruntime int8 |")
    print("|---|---|---|---|")
    for batch in (1, 8):
        for threads in (1, 2):
            q, f = rows[("ggem-int8", batch, threads)], rows[("ggem", batch, threads)]
            r = [a[0] / b[0] for a, b in zip(q, f)]
            o = [a[0] / a[1] for a in q]
            print(f"| {batch} | {threads} | {median(r):.2f} ({min(r):.2f}-{max(r):.2f}) "
                  f"| {median(o):.2f} ({min(o):.2f}-{max(o):.2f}) |")
    agree, total, worst, mid = agreement.split()
    q, f = map(int, sizes.split())
    print(f"\nint8 against f32 in edgevit on the test image and the 20 samples: top-1 the same on {agree} of "
          f"{total}, cosine of the logits {mid} median, {worst} lowest. Model file {q / f:.2f} of f32's "
          f"({q / 2**20:.1f} MiB against {f / 2**20:.1f}).")
heads = [l.split("|") for l in head_rows.strip().splitlines()]
mean = float(heads[0][1])
print("\nThe GGeM head, batch 1, 1 thread, one pass (ratio = p50 / edgevit with mean pooling):\n")
print("| configuration | p50 ms | ratio |")
print("|---|---|---|")
for label, p in heads:
    print(f"| {label} | {float(p):.2f} | {float(p) / mean:.2f} |")
# ViT-Ti/16-224 multiply-adds per image: 12 blocks of qkv, proj, fc1, fc2
# (197 x 192 x 2304) and attention (3 heads x 197 x 197 x 128), the patch
# embedding (196 x 768 x 192) and the head (192 x 1000).
macs = 12 * (197 * 192 * 2304 + 3 * 197 * 197 * 128) + 196 * 768 * 192 + 192 * 1000
flop = 2 * macs
one_e = median(e for e, _ in rows[("token", 1, 1)])
one_o = median(o for _, o in rows[("token", 1, 1)])
print(f"\nThe floor: {flop / 1e9:.2f} GFLOP per image. At the reported {float(mhz):.0f} MHz one core peaks at "
      f"{float(mhz) * 32 / 1e3:.0f} GFLOP/s with 2 x 256-bit FMA per cycle"
      + (f" and {float(mhz) * 64 / 1e3:.0f} with 2 x 512-bit" if isa == "AVX-512" else "")
      + " (turbo clocks can pass both). Batch 1, 1 thread, class-token head:")
for name, ms in (("edgevit", one_e), ("onnxruntime", one_o)):
    rate = flop / (ms / 1e3)
    wide = f", {rate / (float(mhz) * 64e6):.0%} of 512-bit" if isa == "AVX-512" else ""
    print(f"{name} {rate / 1e9:.0f} GFLOP/s ({rate / (float(mhz) * 32e6):.0%} of the 256-bit peak{wide});")
print("\nLargest logit difference from onnxruntime on the test image: "
      + ", ".join(f"{names[m]} {d}" for m, d in (l.split() for l in parity.strip().splitlines())) + ".")
c = json.loads(cold)
print(f"\nCold start (process start to first result) {c['cold_start_ms']:.0f} ms, peak RSS {c['peak_rss_mib']:.1f} MiB "
      f"(class-token bundle, batch 1, 1 thread).")
print("\nWhere the time goes, class-token head, batch 1, 1 thread (`edgevit bench --ops`):\n")
print("```")
print("\n".join(l for l in ops.splitlines() if l.startswith("  ")))
print("```")
EOF
)
printf '%s\n' "$table"

python3 - "$table" <<'EOF'
import re, sys
path = "doc/performance.md"
text = open(path).read()
begin, end = "<!-- bench-cpu begin -->", "<!-- bench-cpu end -->"
if begin in text and end in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{sys.argv[1]}\n{end}", text, flags=re.S)
    open(path, "w").write(text)
    print(f"{path}: updated", file=sys.stderr)
else:
    print(f"{path}: no bench-cpu markers, left as it is", file=sys.stderr)
EOF
