"""Which channel features should folding cluster? Runs `tuneless bench fold` once per feature
scaling (raw | block | gamma) and writes docs/results/fold-features.md.

    python benchmarks/fold_features.py CKPT [CKPT ...] [--sparsities 0.3,0.5,0.7]
        [--test-subset N] [--methods fold-ar,fold-r] [--work /tmp/fold-features]
    python benchmarks/fold_features.py --collate-only ...   # re-render from existing CSVs

"raw" concatenates producer rows, norm parameters and consumer columns as they are (BN
already fused into the producer for AR and R); "block" scales each tensor to unit mean
row norm; "gamma" scales producer rows by their BN γ (see tuneless.methods.fold).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch

MODES = ("raw", "block", "gamma")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--sparsities", default="0.3,0.5,0.7")
    p.add_argument("--methods", default="fold-ar,fold-r")
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--work", default="/tmp/fold-features")
    p.add_argument("--out", default="docs/results/fold-features.md")
    p.add_argument("--collate-only", action="store_true")
    p.add_argument("--measured-by", default=None,
                   help="with --collate-only: the command and commit that measured the CSVs")
    args = p.parse_args()
    work = Path(args.work)
    for mode in MODES:
        if args.collate_only:
            continue
        cmd = ["tuneless", "bench", "fold", *args.checkpoints, "--threads", "1",
               "--sparsities", args.sparsities, "--methods", args.methods,
               "--features", mode, "--out", str(work / mode), "--name", "f"]
        if args.test_subset:
            cmd += ["--test-subset", str(args.test_subset)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    rows = defaultdict(dict)  # (model, method, requested) -> mode -> accuracy
    dense, images = {}, {}
    for mode in MODES:
        for path in sorted((work / mode).glob("*.csv")):
            for r in csv.DictReader(path.open()):
                if not r["accuracy"]:
                    continue
                key = (r["model"], r["method"], float(r["requested"]))
                rows[key][mode] = float(r["accuracy"])
                dense[r["model"]], images[r["model"]] = float(r["dense_acc"]), r["test_images"]
    from tuneless.io_atomic import atomic_write_text
    from tuneless.provenance import stamp, stamp_markdown

    torch.set_num_threads(1)  # the runs use one thread; the stamp records this process's
    command = "python benchmarks/fold_features.py " + " ".join(sys.argv[1:])
    lines = ["# Fold feature scaling: raw vs block vs gamma", "",
             stamp_markdown(stamp(command)), "",
             "Each run: `tuneless bench fold CKPTS --threads 1 --features MODE` (one thread)."
             + (f" Measured by `{args.measured_by}`." if args.measured_by else ""), "",
             "Accuracy (%) after folding, no fine-tuning; Fold-R re-estimates BatchNorm on "
             "1024 real training images. CIFAR-10 models are trained and tested on the "
             "project's JPEG copy.", "",
             "| model | test images | dense | method | removed | raw | block | gamma | best |",
             "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    wins = defaultdict(int)
    for (model, method, sp), acc in sorted(rows.items()):
        cells = [f"{100 * acc[m]:.1f}" if m in acc else "-" for m in MODES]
        best = max(acc, key=acc.get)
        wins[best] += 1
        lines.append(f"| {model} | {images[model]} | {100 * dense[model]:.1f} | {method} | "
                     f"{sp:.0%} | {' | '.join(cells)} | {best} |")
    lines += ["", "Best per row: " + ", ".join(f"{m} {wins[m]}" for m in MODES) + "."]
    atomic_write_text("\n".join(lines) + "\n", Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
