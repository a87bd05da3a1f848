"""Fold-DIR (the default `repair="dir"`: DeepInversion images, statistics matching) of one
checkpoint at one sparsity over many seeds: one JSON line per seed with the accuracy on the
first 2,000 CIFAR-10 test images and the fold's CPU seconds. For checking that a change
meant to leave the repair's numbers alone (a faster computation of the same thing) does,
by running it at both commits side by side. One thread.

    python benchmarks/fold_dir_seeds.py models/resnet56-avg-cifar10.pt 0.5 0,1,2
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv: list[str]) -> int:
    from tuneless.data.loader import get_dataset
    from tuneless.evaluate import accuracy
    from tuneless.methods.fold import fold
    from tuneless.modelio import load_model

    torch.set_num_threads(1)
    ckpt, sparsity, seeds = argv[0], float(argv[1]), [int(s) for s in argv[2].split(",")]
    model = load_model(ckpt)
    test = get_dataset("cifar10", "test")
    x = torch.zeros(2, 3, 32, 32)
    for seed in seeds:
        cpu = time.process_time()
        small = fold(model, sparsity=sparsity, repair="dir", seed=seed, example_inputs=x)
        cpu = time.process_time() - cpu
        print(json.dumps({"checkpoint": ckpt, "sparsity": sparsity, "seed": seed,
                          "accuracy": round(100 * accuracy(small, test, limit=2000), 2),
                          "cpu_s": round(cpu, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
