"""Fold, then SVD: how much of the budget folding should take (tuneless.methods.fold_svd).

    python benchmarks/fold_svd.py models/vgg11_bn-w0.5-cifar10.pt --totals 0.8,0.9 \
        --fold-shares 0,0.1,0.2,0.3,0.5 --out docs/results/fold-svd-vgg11.md

For each total fraction of parameters removed and each share removed by folding first
(Fold-AR; 0 = SVD alone), the test accuracy after SVD takes the rest, no fine-tuning. One
thread.
"""

from __future__ import annotations

import argparse
import sys

import torch

from tuneless.data.loader import get_dataset
from tuneless.evaluate import accuracy, count_params
from tuneless.io_atomic import atomic_write_text
from tuneless.methods.fold_svd import fold_svd
from tuneless.methods.svd import svd
from tuneless.modelio import load_model
from tuneless.provenance import stamp, stamp_markdown


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--totals", default="0.8,0.9")
    ap.add_argument("--fold-shares", default="0,0.1,0.2,0.3,0.5")
    ap.add_argument("--limit", type=int, help="a random subset of N test images (seed 0)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    info = stamp("python benchmarks/fold_svd.py " + " ".join(sys.argv[1:]))
    model = load_model(args.model).eval()
    dataset = (getattr(model, "tuneless_meta", None) or {}).get("dataset", "cifar10")
    test = get_dataset(dataset, "test")
    if args.limit:
        test = test.subset(args.limit, seed=0)
    x = test.tensors(8)[0]
    totals = [float(s) for s in args.totals.split(",")]
    shares = [float(s) for s in args.fold_shares.split(",")]
    before = count_params(model)
    rows = []
    for total in totals:
        cells = []
        for share in shares:
            if share >= total:
                cells.append("–")
                continue
            small = (svd(model, sparsity=total) if share == 0 else
                     fold_svd(model, sparsity=total, fold_sparsity=share, example_inputs=x))
            acc = accuracy(small, test)
            removed = 1 - count_params(small) / before
            cells.append(f"{100 * acc:.2f}")
            print(f"total {total} fold {share}: {acc:.4f} (removed {removed:.3f})", flush=True)
        rows.append(f"| {total:.0%} | " + " | ".join(cells) + " |")
    images = f"a random {args.limit} of the" if args.limit else "all"
    text = "\n".join([
        f"# Fold, then SVD: {args.model}", "", stamp_markdown(info),
        f"Test accuracy (%, {images} test images), no fine-tuning, by total fraction of "
        "parameters removed (rows) and the share folding removes first (columns; 0 = SVD "
        "alone; Fold-AR, then SVD with the per-param allocation on the rest).", "",
        "| removed | " + " | ".join(f"fold {s:.0%}" for s in shares) + " |",
        "|---|" + "---:|" * len(shares), *rows, ""])
    atomic_write_text(text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
