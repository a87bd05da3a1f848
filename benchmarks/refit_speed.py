"""Time the least-squares layer refit with cached targets (one pass) and per-layer capture.

    python benchmarks/refit_speed.py [CHECKPOINT] [--threads 2] [--images 256]

Prunes the checkpoint 30% with structured L1 and refits it both ways on training images;
prints the seconds of each and the largest weight difference between the two results.
"""

from __future__ import annotations

import argparse
import time

import torch

import tuneless
from tuneless.checkpoint import load_checkpoint
from tuneless.data import get_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default="models/resnet56-avg-cifar10.pt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint)
    dataset = model.tuneless_meta.get("dataset", "cifar10")
    images = get_dataset(dataset, "train").subset(args.images).x.float()
    x = images[:2]
    pruned = tuneless.prune(model, sparsity=0.3, example_inputs=x)
    results = {}
    for label, kw in (("one pass (cached targets)", {}), ("per-layer capture", {"cache_bytes": 0})):
        t = time.perf_counter()
        results[label] = tuneless.refit(model, pruned, images, example_inputs=x, **kw)
        print(f"{label}: {time.perf_counter() - t:.1f} s")
    a, b = results.values()
    diff = max((u - v).abs().max().item()
               for u, v in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    print(f"largest weight difference between the two: {diff:.2e}")


if __name__ == "__main__":
    main()
