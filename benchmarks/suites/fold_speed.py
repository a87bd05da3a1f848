"""`tuneless bench fold-speed`: how long Fold-AR takes, and whether speed costs k-means quality.

Times Fold-AR at 50% of parameters removed on ResNet-56, a CIFAR ResNet-18 (width 64)
and VGG11-BN with a 4096-wide classifier (random weights unless checkpoints are given:
timing does not depend on what the weights learned, cluster quality does), and
compares our per-group k-means objective (n_init='auto') with scikit-learn's
KMeans(n_init=10) on the same feature matrices. Writes CSV + markdown to the output folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import torch

MODELS = {
    "resnet56": ("resnet56", {}, 10.0),
    "resnet18": ("resnet18", {"width": 1.0}, 1.0),
    "vgg11_bn-4096": ("vgg11_bn", {"hidden": 4096}, 200.0),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sklearn-max-n", type=int, default=512,
                   help="compare with scikit-learn only on groups up to this many channels")
    p.add_argument("--sklearn-model", default="resnet56",
                   help="model whose groups are compared with scikit-learn")
    p.add_argument("--weights", default=None, help="checkpoint for --sklearn-model (optional)")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--name", default="fold-speed")


def run(args) -> int:
    from tuneless.io_atomic import atomic_write_text
    from tuneless.methods.fold import fold
    from tuneless.provenance import stamp, stamp_markdown
    from tuneless.zoo import build_model

    torch.set_num_threads(args.threads)
    info = stamp()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    timing = []
    fold(build_model("resnet20").eval(), sparsity=0.3, example_inputs=x)  # warm imports
    for key in [m for m in args.models.split(",") if m]:
        arch, kw, target = MODELS[key]
        model = build_model(arch, **kw).eval()
        t0, c0 = time.perf_counter(), time.process_time()
        small = fold(model, sparsity=args.sparsity, repair="ar", example_inputs=x)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        timing.append({"model": key, "seconds": round(secs, 2), "cpu_s": round(cpu, 2),
                       "target_s": target,
                       "achieved": round(small.tuneless_report["achieved_sparsity"], 4),
                       "met": secs < target})
        print(f"{key}: Fold-AR {args.sparsity:.0%} in {secs:.2f} s, {cpu:.2f} s CPU "
              f"(target < {target} s)",
              flush=True)
    quality = compare_with_sklearn(args)
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["kind", "model", "group", "n", "k", "d", "ours", "sklearn",
                             "ours_s", "sklearn_s", "seconds", "cpu_s", "target_s", "achieved",
                             "met"],
                       extrasaction="ignore")
    w.writeheader()
    w.writerows([{"kind": "timing", **r} for r in timing])
    w.writerows([{"kind": "kmeans", **r} for r in quality])
    out = Path(args.out)
    atomic_write_text(buf.getvalue(), out / f"{args.name}.csv")
    lines = ["# Folding speed and k-means quality", "", stamp_markdown(info), "",
             "Fold-AR wall time (graph discovery, BN fusion, clustering, merging, AR) on "
             "random weights (wall clock, and CPU time of this process, which other jobs on "
             "the machine do not inflate):", "",
             "| model | seconds | CPU seconds | target | met (wall) | removed |",
             "|---|---:|---:|---:|---|---:|"]
    lines += [f"| {r['model']} | {r['seconds']} | {r['cpu_s']} | < {r['target_s']} | "
              f"{'yes' if r['met'] else 'NO'} | {r['achieved']} |" for r in timing]
    if quality:
        lines += kmeans_table(args, quality)
    else:
        lines += ["", "k-means quality not compared in this run (`--sklearn-max-n` "
                  f"{args.sklearn_max_n} left no group to compare)."]
    atomic_write_text("\n".join(lines) + "\n", out / f"{args.name}.md")
    print(f"wrote {out}/{args.name}.csv and .md", flush=True)
    return 0


def kmeans_table(args, quality: list[dict]) -> list[str]:
    """Markdown rows: our k-means objective per group beside scikit-learn's."""
    lines = ["", f"k-means objective per group of {args.sklearn_model} "
              f"({args.weights or 'random weights'}), ours (n_init='auto', see "
              "tuneless.cluster.auto_restarts) vs "
              "scikit-learn KMeans(n_init=10, random_state=0), same raw AR features (BN fused):",
              "", "| group | n | k | d | ours | sklearn | ours/sklearn | ours s | sklearn s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['group']} | {r['n']} | {r['k']} | {r['d']} | {r['ours']:.6g} | "
              f"{r['sklearn']:.6g} | {r['ours'] / r['sklearn']:.5f} | {r['ours_s']} | "
              f"{r['sklearn_s']} |" for r in quality]
    worse = [r for r in quality if r["ours"] > r["sklearn"] * (1 + 1e-9)]
    lines += ["", f"Groups where ours is worse than scikit-learn: {len(worse)} of {len(quality)}."]
    return lines


def compare_with_sklearn(args) -> list[dict]:
    """Per reducible group: our k-means objective and scikit-learn's on the same features."""
    from sklearn.cluster import KMeans

    from tuneless.cluster import inertia_of, kmeans
    from tuneless.zoo import build_model

    if args.weights:
        from benchmarks.suites.fold_bench import load_any

        model = load_any(args.weights)[0]
    else:
        arch, kw, _ = MODELS.get(args.sklearn_model, (args.sklearn_model, {}, 0))
        torch.manual_seed(0)
        model = build_model(arch, **kw).eval()
    rows = []
    for g, feats, k in fold_problems(model, torch.randn(2, 3, 32, 32), args.sparsity):
        if g.n > args.sklearn_max_n:
            continue
        t0 = time.perf_counter()
        ours = inertia_of(feats, kmeans(feats, k, seed=0).labels)  # exact, float64
        t1 = time.perf_counter()
        ref = KMeans(k, n_init=10, random_state=0).fit(feats.double().numpy()).inertia_
        t2 = time.perf_counter()
        rows.append({"model": args.sklearn_model, "group": g.id, "n": g.n, "k": k,
                     "d": feats.shape[1], "ours": ours, "sklearn": float(ref),
                     "ours_s": round(t1 - t0, 3), "sklearn_s": round(t2 - t1, 3)})
        print(f"  group {g.id}: n={g.n} k={k} ours {ours:.6g} sklearn {ref:.6g}", flush=True)
    return rows


def fold_problems(model: torch.nn.Module, x: torch.Tensor, sparsity: float):
    """(group, raw AR features with BN fused, cluster count) for each group Fold-AR shrinks."""
    import copy

    from tuneless.budget import solve
    from tuneless.graph import find_groups
    from tuneless.methods.fold import channel_features
    from tuneless.repair import fuse_bn_normalisation

    graph = find_groups(model, x)
    work = copy.deepcopy(model)
    fuse_bn_normalisation(work, graph)
    kept = solve(model, graph, sparsity).kept
    for g in graph.reducible:
        if kept[g.id] < g.n:
            yield g, channel_features(work, g, "raw"), kept[g.id]
