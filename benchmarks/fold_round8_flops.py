"""Fold-AR and Fold-R at a FLOP budget with channel counts in multiples of 8 (the deployment
setting of docs/getting-started.md), uniform widths, 3 seeds, full test split:

    python benchmarks/fold_round8_flops.py CHECKPOINT [--sparsity 0.5] [--seeds 0,1,2]

One JSON line per row: the commit of the tuneless that ran (run it with PYTHONPATH set to
another checkout's src to compare solvers), repair, seed, accuracy, achieved FLOP sparsity
and the per-group widths. Fold-R re-estimates BatchNorm on 1,024 plain training images.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

import tuneless
from tuneless.data import get_dataset
from tuneless.evaluate import accuracy
from tuneless.modelio import load_model
from tuneless.progress import set_progress
from tuneless.provenance import git_commit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    torch.set_num_threads(1)
    set_progress(False)
    warnings.simplefilter("ignore")  # the achieved-sparsity notes: the rows report it
    commit = git_commit(Path(tuneless.__file__).resolve().parent)  # the checkout imported
    model = load_model(args.checkpoint)
    test = get_dataset("cifar10", "test")
    real = get_dataset("cifar10", "train").subset(1024, seed=1).training_view(None, seed=2)
    x = test.tensors(8)[0]
    for repair in ("ar", "data"):
        for seed in (int(s) for s in args.seeds.split(",")):
            small = tuneless.fold(model, sparsity=args.sparsity, budget="flops", round_to=8,
                                  allocation="uniform", repair=repair, example_inputs=x,
                                  data=real if repair == "data" else None, seed=seed)
            r = small.tuneless_report
            print(json.dumps({"commit": commit, "model": Path(args.checkpoint).stem,
                              "repair": repair, "seed": seed,
                              "accuracy": round(accuracy(small, test), 4),
                              "achieved": round(r["achieved_sparsity"], 4),
                              "kept": r["kept"]}), flush=True)


if __name__ == "__main__":
    main()
