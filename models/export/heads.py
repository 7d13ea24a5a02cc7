"""A timm ViT with each head users export: timm's class token, mean pooling,
or GGeM (3 groups = heads, p from 2 to 4, written the obvious way), and
random biases and LayerNorm weights: timm initializes them to zeros and
ones, which tract folds away and no trained model has. Used by
fixtures.py (small, for the tests) and tools/bench/vit_ti.py (ViT-Ti)."""

import timm
import torch


class Headed(torch.nn.Module):
    def __init__(self, head, **vit):
        super().__init__()
        self.vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **vit)
        self.head = head
        self.p = torch.nn.Parameter(torch.tensor([2.0, 3.0, 4.0]))

    def forward(self, x):
        features = self.vit.forward_features(x)
        if self.head == "token":
            return self.vit.forward_head(features)
        tokens = features[:, 1:]
        if self.head == "mean":
            pooled = tokens.mean(dim=1)
        else:
            p = self.p.repeat_interleave(tokens.shape[-1] // 3)
            pooled = tokens.clamp(min=1e-6).pow(p).mean(dim=1).pow(1.0 / p)
        return self.vit.head(pooled)


def headed(head, seed=0, **vit):
    """`Headed(head, **vit)` from `seed`, in eval mode, biases and LayerNorm
    weights drawn around timm's (normal, std 0.02)."""
    torch.manual_seed(seed)
    model = Headed(head, **vit).eval()
    with torch.no_grad():
        for name, param in model.vit.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.02)
    return model
