"""Train the edgevit Fashion-MNIST ViT with one pooling head.

    python models/export/train.py --pooling ggem --out models/export/runs/ggem.pt

Same seed and budget for every pooling, so their test accuracies compare.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vit import POOLINGS, ViT, read_idx

DATA = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530


def load(split):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(DATA / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(DATA / f"{prefix}-labels-idx1-ubyte.gz")
    x = (torch.from_numpy(x.copy()).float().div(255.0) - MEAN) / STD
    return x.unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def augment(x, gen):
    """Random translation by up to 2 pixels (zero = background after padding) and horizontal flip."""
    b = x.shape[0]
    pad = F.pad(x, (2, 2, 2, 2), value=-MEAN / STD)
    dy = torch.randint(0, 5, (b,), generator=gen)
    dx = torch.randint(0, 5, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(28))[:, None, :, None].expand(b, 1, 28, 32)
    pad = pad.gather(2, rows)
    cols = (dx[:, None] + torch.arange(28))[:, None, None, :].expand(b, 1, 28, 28)
    x = pad.gather(3, cols)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def evaluate(model, x, y, batch=1000):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pooling", choices=POOLINGS, required=True)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    xtr, ytr = load("train")
    xte, yte = load("test")

    model = ViT(pooling=args.pooling)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = len(xtr) // args.batch
    total = steps_per_epoch * args.epochs
    warmup = steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, total) / total)))

    print(f"pooling={args.pooling} params={params} epochs={args.epochs}", flush=True)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        for step in range(steps_per_epoch):
            idx = order[step * args.batch:(step + 1) * args.batch]
            xb = augment(xtr[idx], gen)
            loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(model, xte, yte)
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.4f} test {acc * 100:.2f}% "
              f"elapsed {time.time() - start:.0f}s", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = dict(pooling=args.pooling, seed=args.seed, epochs=args.epochs, batch=args.batch,
                  lr=args.lr, params=params, test_accuracy=acc, train_seconds=round(time.time() - start),
                  config=model.config)
    if model.pool is not None:
        result["p"] = model.pool.p.clamp(min=1.0).tolist()
    torch.save({"config": model.config, "state": model.state_dict(), "result": result}, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
