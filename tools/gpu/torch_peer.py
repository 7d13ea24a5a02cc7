"""PyTorch eager FP16 on the GPU, the peer edgevit's CUDA backend is timed
against: ViT-Ti/16-224 with a GGeM head (3 groups = heads), the architecture
of tools/bench/vit_ti.py's vit-ti-ggem.onnx (timm's vit_tiny_patch16_224,
written out here so the GPU machine needs no timm; loaded with that
model's weights it gives the same logits, bit for bit, in f32 on the CPU),
random weights, in half precision, fused attention
(scaled_dot_product_attention, as timm uses).

    python tools/gpu/torch_peer.py ITERATIONS BATCH [BATCH...]

prints one JSON object per batch: p50 and p99 latency of one run of the
whole batch (synchronized), and images per second.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

DIM, DEPTH, HEADS, PATCH, SIZE, CLASSES = 192, 12, 3, 16, 224, 1000


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM, eps=1e-6)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.norm2 = nn.LayerNorm(DIM, eps=1e-6)
        self.fc1 = nn.Linear(DIM, 4 * DIM)
        self.fc2 = nn.Linear(4 * DIM, DIM)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, DIM))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class VitTiGgem(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos = nn.Parameter(torch.randn(1, (SIZE // PATCH) ** 2 + 1, DIM) * 0.02)
        self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(DIM, eps=1e-6)
        self.p = nn.Parameter(torch.tensor([2.0, 3.0, 4.0]))
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        tokens = self.norm(self.blocks(x))[:, 1:]
        p = self.p.repeat_interleave(DIM // HEADS)
        pooled = tokens.clamp(min=1e-6).pow(p).mean(dim=1).pow(1.0 / p)
        return self.head(pooled)


def main():
    iterations = int(sys.argv[1])
    torch.manual_seed(0)
    model = VitTiGgem().eval().cuda().half()
    for batch in map(int, sys.argv[2:]):
        x = torch.randn(batch, 3, SIZE, SIZE, device="cuda", dtype=torch.half)
        times = []
        with torch.inference_mode():
            for i in range(iterations + 10):
                torch.cuda.synchronize()
                t = time.perf_counter()
                model(x)
                torch.cuda.synchronize()
                if i >= 10:
                    times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        p50 = times[len(times) // 2]
        p99 = times[min(len(times) - 1, -(-99 * len(times) // 100) - 1)]
        print(json.dumps({"runtime": f"pytorch {torch.__version__} eager fp16", "batch": batch,
                          "p50_ms": p50, "p99_ms": p99, "images_per_s": batch * 1e3 / p50}))


if __name__ == "__main__":
    main()
