"""Wall time of the default fold + refit against uniform widths, alternating on one model:

    python benchmarks/fold_refit_time.py [CHECKPOINT] [--sparsity 0.1] [--rounds 2]

ResNet-56 by default, 1,024 plain training images, one thread; run on a quiet machine.
Each line: the allocation asked for, what ran (the report's "allocation"), seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

import tuneless
from tuneless.data.loader import get_dataset
from tuneless.modelio import load_model
from tuneless.progress import set_progress


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default="models/resnet56-avg-cifar10.pt")
    p.add_argument("--sparsity", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--images", type=int, default=1024)
    args = p.parse_args()
    torch.set_num_threads(1)
    set_progress(False)
    model = load_model(args.checkpoint)
    dataset = (getattr(model, "tuneless_meta", None) or {}).get("dataset", "cifar10")
    real = get_dataset(dataset, "train", None).subset(args.images).training_view(None)
    x = real[:1]  # the example input: one image of the training set
    for _ in range(args.rounds):
        for alloc in ("uniform", "auto"):
            t = time.perf_counter()
            small = tuneless.fold(model, sparsity=args.sparsity, repair="refit", data=real,
                                  example_inputs=x, allocation=alloc)
            print(alloc, small.tuneless_report["allocation"],
                  f"{time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
