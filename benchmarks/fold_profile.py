"""Where Fold-AR's time goes on one model: per group, the isometric embedding and k-means.

    python benchmarks/fold_profile.py [--arch resnet18] [--width 1.0] [--sparsity 0.5]
                                      [--threads 1] [--repeats 3]

Prints, per reducible group, the feature matrix size (n channels × d values), the cluster
count k, the time of `cluster.embed` (the Gram matrix and its eigendecomposition) and of the
whole `cluster.kmeans` (embedding included), then the median end-to-end Fold-AR time and a
cProfile listing of the slowest calls. Random weights: timing does not depend on what the
weights learned. Writes docs/results/fold-profile-<arch>.md.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.suites
from benchmarks.suites.fold_speed import fold_problems
from tuneless.cluster import embed, kmeans
from tuneless.io_atomic import atomic_write_text
from tuneless.methods.fold import fold
from tuneless.provenance import stamp, stamp_markdown
from tuneless.zoo import build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="docs/results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    info = stamp("python benchmarks/fold_profile.py " + " ".join(sys.argv[1:]))
    torch.manual_seed(0)
    model = build_model(args.arch, width=args.width).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # uniform widths: this profiles the clustering and the rewrite (what issue 17's speed
    # target is about); the measured widths' probing is timed by fold_speed_torchvision.py
    uniform = {"allocation": "uniform"}
    fold(build_model("resnet20").eval(), sparsity=0.3, example_inputs=x, **uniform)  # warm up

    rows = []
    for g, feats, k in fold_problems(model, x, args.sparsity):
        t0 = time.perf_counter()
        z = embed(feats)
        t1 = time.perf_counter()
        kmeans(feats, k, seed=0)
        t2 = time.perf_counter()
        rows.append((g.id, g.n, feats.shape[1], k, z.shape[1], t1 - t0, t2 - t1))

    walls = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fold(model, sparsity=args.sparsity, repair="ar", example_inputs=x, **uniform)
        walls.append(time.perf_counter() - t0)
    prof = cProfile.Profile()
    prof.enable()
    fold(model, sparsity=args.sparsity, repair="ar", example_inputs=x, **uniform)
    prof.disable()
    listing = io.StringIO()
    pstats.Stats(prof, stream=listing).sort_stats("cumulative").print_stats(25)

    lines = [f"# Where Fold-AR's time goes: {args.arch} (width {args.width}), "
             f"{args.sparsity:.0%} removed", "", stamp_markdown(info), "",
             f"End-to-end Fold-AR, median of {args.repeats}: **{statistics.median(walls):.3f} s** "
             f"({', '.join(f'{w:.3f}' for w in walls)}).", "",
             "| group | n | d | k | embedded dims | embed s | k-means s (incl. embed) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {gid} | {n} | {d} | {k} | {dz} | {te:.3f} | {tk:.3f} |"
              for gid, n, d, k, dz, te, tk in rows]
    lines += ["", f"Sum: embed {sum(r[5] for r in rows):.3f} s, k-means "
              f"{sum(r[6] for r in rows):.3f} s.", "", "cProfile, cumulative:", "", "```",
              *[ln for ln in listing.getvalue().splitlines()
                if ln.strip() and "Ordered by" not in ln][:40], "```"]
    out = Path(args.out) / f"fold-profile-{args.arch}.md"
    atomic_write_text("\n".join(lines) + "\n", out)
    print("\n".join(lines[4:len(rows) + 10]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
