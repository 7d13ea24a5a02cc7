"""Soak test of the main loop with hot swaps: `edgevit run pattern:// null://`
for many frames while new model versions appear on a local channel.

    tools/soak.sh --frames 100000 --swap-every 10000

Publishes v1 of the shipped bundle to a file:// channel, installs it, starts
the run loop polling that channel every second, and publishes v2, v3, ...
each time another --swap-every frames went by. Samples the process's RSS
(/proc/PID/status) and the frame rate every --sample-every frames, then
prints first/last/max RSS, the growth, the FPS spread and which frame each
version first ran on. Exits 1 when the RSS grew more than --max-growth-mib
or a published version never ran. Standard library only.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "models/fmnist-vit-ggem"
KEY = ROOT / "models/keys/dev-test-only.key"
PUB = ROOT / "models/keys/dev-test-only.pub"


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target/debug/edgevit"))
    ap.add_argument("--frames", type=int, default=100000)
    ap.add_argument("--swap-every", type=int, default=10000)
    ap.add_argument("--sample-every", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=1000, help="frames before the first RSS sample")
    ap.add_argument("--max-growth-mib", type=float, default=None)
    ap.add_argument("--trace", action="store_true", help="print every sample: frames, RSS KiB, FPS, version")
    args = ap.parse_args()
    exe = args.bin

    def edgevit(*a):
        subprocess.run([exe, *map(str, a)], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)

    tmp = Path(tempfile.mkdtemp(prefix="edgevit-soak-"))
    try:
        www, state = tmp / "www", tmp / "state"
        channel = f"file://{www}/channel.toml"
        trust = ["--trust", PUB, "--trust-dir", tmp / "no-keys"]

        def publish(version):
            bundle = tmp / f"bundle-v{version}"
            shutil.copytree(BUNDLE, bundle)
            manifest = bundle / "manifest.toml"
            text = re.sub(r"(?m)^version = \d+$", f"version = {version}", manifest.read_text(), count=1)
            manifest.write_text(text)
            edgevit("bundle", "sign", bundle, "--key", KEY)
            edgevit("update", "publish", "--bundle", bundle, "--key", KEY, "--out", www)

        publish(1)
        edgevit("update", "apply", "--channel", channel, "--state-dir", state, *trust)
        cmd = [exe, "run", "pattern://", "null://", "--json", "--frames", str(args.frames), "--state-dir", str(state)]
        cmd += [str(t) for t in trust] + ["--update-channel", channel, "--update-interval", "1s"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, text=True)
        samples = []  # (frames, rss KiB, fps over the window)
        first_frame_of = {}
        published = 1
        frames = 0
        window_start = time.monotonic()
        for line in proc.stdout:
            frame = json.loads(line)
            frames += 1
            first_frame_of.setdefault(frame["version"], frames)
            if frames % args.sample_every == 0 and frames >= args.warmup:
                now = time.monotonic()
                samples.append((frames, rss_kib(proc.pid), args.sample_every / (now - window_start)))
                window_start = now
                if args.trace:
                    print(f"sample {samples[-1][0]} {samples[-1][1]} {samples[-1][2]:.0f} v{frame['version']}", flush=True)
            elif frames % args.sample_every == 0:
                window_start = time.monotonic()
            if frames // args.swap_every >= published and frames + args.swap_every // 2 < args.frames:
                published += 1
                publish(published)
        code = proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if code != 0 or not samples:
        print(f"soak: edgevit run exited {code} after {frames} frames", file=sys.stderr)
        return 1
    rss = [s[1] for s in samples]
    fps = [s[2] for s in samples]
    growth = (rss[-1] - rss[0]) / 1024
    half = len(fps) // 2 or 1
    print(f"frames        {frames} ({published} versions published, swap every {args.swap_every})")
    print(f"RSS MiB       first {rss[0] / 1024:.1f} (frame {samples[0][0]})  last {rss[-1] / 1024:.1f}  max {max(rss) / 1024:.1f}  growth {growth:+.2f}")
    print(f"FPS           min {min(fps):.0f}  median {sorted(fps)[len(fps) // 2]:.0f}  max {max(fps):.0f}  first half mean {sum(fps[:half]) / half:.0f}  second half mean {sum(fps[half:]) / max(len(fps) - half, 1):.0f}")
    print("versions      " + ", ".join(f"v{v} from frame {f}" for v, f in sorted(first_frame_of.items())))
    missing = [v for v in range(1, published + 1) if v not in first_frame_of]
    if missing:
        print(f"soak: versions {missing} were published but never ran", file=sys.stderr)
        return 1
    if args.max_growth_mib is not None and growth > args.max_growth_mib:
        print(f"soak: RSS grew {growth:.2f} MiB, more than {args.max_growth_mib}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
