"""The edgevit default classifier: a small ViT whose head pools patch tokens.

Pooling variants, all over the tokens after the final LayerNorm:
  cls   the class token (the usual ViT head)
  mean  arithmetic mean of the patch tokens
  gem   generalized mean, one learned exponent for all channels
  ggem  group generalized mean: one learned exponent per channel group,
        groups = attention heads (doc/kernels.md)
"""

import gzip
import struct

import numpy as np
import torch
from torch import nn

EPS = 1e-6
POOLINGS = ("cls", "mean", "gem", "ggem")


class GroupGeM(nn.Module):
    """y[b, c] = (mean_n max(x[b, n, c], eps) ^ p_g(c)) ^ (1 / p_g(c)), p >= 1."""

    def __init__(self, dim, groups, p_init=3.0, eps=EPS):
        super().__init__()
        assert dim % groups == 0, "channels must split evenly into groups"
        self.dim = dim
        self.groups = groups
        self.eps = eps
        self.p = nn.Parameter(torch.full((groups,), float(p_init)))

    def exponents(self):
        """Per-channel exponents: each group's p (clamped to >= 1) over its channels."""
        return self.p.clamp(min=1.0).repeat_interleave(self.dim // self.groups)

    def forward(self, x):
        p = self.exponents()
        return x.clamp(min=self.eps).pow(p).mean(dim=1).pow(1.0 / p)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, image=28, channels=1, patch=7, dim=64, depth=4, heads=4,
                 mlp_ratio=2.0, classes=10, pooling="ggem"):
        super().__init__()
        assert pooling in POOLINGS
        self.config = dict(image=image, channels=channels, patch=patch, dim=dim, depth=depth,
                           heads=heads, mlp_ratio=mlp_ratio, classes=classes, pooling=pooling)
        self.pooling = pooling
        tokens = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pool = {
            "gem": lambda: GroupGeM(dim, 1),
            "ggem": lambda: GroupGeM(dim, heads),
        }.get(pooling, lambda: None)()
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        if self.pooling == "cls":
            x = x[:, 0]
        elif self.pooling == "mean":
            x = x[:, 1:].mean(dim=1)
        else:
            x = self.pool(x[:, 1:])
        return self.head(x)


def read_idx(path):
    """An idx file (gzip or plain) as a numpy array: uint8 images [N, H, W] or labels [N]."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 0x08, f"{path}: not an unsigned-byte idx file"
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
