"""Which fold defaults win, as the mean and spread of several seeds on every benchmark network.

Each variant is a set of `tuneless.fold` options (features, BN fusion, BN statistics in the
features, k-means restarts); each is run with every repair given and every seed, at every
ratio, on every checkpoint, and measured on the full test split. Rows go to a CSV as they
finish (rerunning the same command resumes), then a markdown table of mean ± std.

    python benchmarks/fold_defaults.py models/vgg11_bn-w0.5-cifar10.pt --ratio channel \\
        --points 0.3,0.5,0.7 --repairs ar,data --seeds 0,1,2 --out docs/results/fold-defaults

Fold-R ("data") sees 1,024 training images in the checkpoint's training view, as
`tuneless bench fold` does.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.suites
from benchmarks.suites import clusterers  # noqa: E402,F401  (registers shallow-all, wide*)
from benchmarks.suites.fold_bench import load_any, training_pad  # noqa: E402
from benchmarks.suites.rows import write_rows  # noqa: E402
from benchmarks.suites.synthesis import synthesized  # noqa: E402
from tuneless.data import get_dataset  # noqa: E402
from tuneless.errors import TunelessError  # noqa: E402
from tuneless.evaluate import accuracy  # noqa: E402
from tuneless.io_atomic import atomic_write_text  # noqa: E402
from tuneless.methods.fold import fold  # noqa: E402
from tuneless.provenance import stamp, stamp_markdown  # noqa: E402
from tuneless.repair import get_repair  # noqa: E402

# name -> fold options, every one explicit (defaults change); "paper-order" is Algorithm 1's
# order (BN fused first, running means in the features), the defaults before this sweep
VARIANTS: dict[str, dict] = {
    "default": {},  # whatever tuneless.fold does at the commit in the CSV
    "paper-order": {"fuse_bn": True, "norm_stats": True},
    "no-stats": {"fuse_bn": True, "norm_stats": False},
    "unfused": {"fuse_bn": False, "norm_stats": True},
    "unfused-no-stats": {"fuse_bn": False, "norm_stats": False},
    "unfused-no-stats-n10": {"fuse_bn": False, "norm_stats": False, "n_init": 10},
    "no-stats-n10": {"fuse_bn": True, "norm_stats": False, "n_init": 10},
    "ward": {"cluster": "ward"},  # agglomerative (deterministic): one seed is enough
    "ward-hartigan": {"cluster": "ward-hartigan"},  # Ward, then Hartigan moves
    "kmeans+ward": {"cluster": "kmeans+ward"},  # the better objective of the two
    # Fold-DIR's cost is DeepInversion's: images × steps forward/backward passes (issue 17
    # asks for < 90 s on ResNet-56); the default is 128 images × 100 steps
    "dir-s50": {"inversion": {"steps": 50}},
    "dir-s25": {"inversion": {"steps": 25}},
    "dir-i64": {"inversion": {"num_images": 64}},
    "dir-i64-s50": {"inversion": {"num_images": 64, "steps": 50}},
    "dir-s50-lr02": {"inversion": {"steps": 50, "lr": 0.2}},
    "dir-s25-lr02": {"inversion": {"steps": 25, "lr": 0.2}},
    "dir-s12-lr02": {"inversion": {"steps": 12, "lr": 0.2}},
    # (dir-c50 / dir-c75: {"inversion": {"coarse_steps": 50 / 75}}, the first steps at half
    # resolution; the option existed at commit 623c902 only: it lost, docs/folding.md)
    # repair "self": DeepInversion settings for the images its refit sees
    "self-i256-s50": {"inversion": {"num_images": 256, "steps": 50, "lr": 0.2}},
    "self-i128-s50": {"inversion": {"num_images": 128, "steps": 50, "lr": 0.2}},
    # Ward + Hartigan on shallow cuts (k ≥ 0.7·n) of wide groups (n ≥ 256), k-means
    # elsewhere (cluster="auto"); "shallow-all": the same on groups of any width
    "auto": {"cluster": "auto"},  # the default since it was measured
    "kmeans": {"cluster": "kmeans"},  # the default before
    "shallow-all": {"cluster": "shallow-all"},
    # Ward + Hartigan on every group of ≥ 128 / ≥ 256 channels, k-means on narrower ones
    "wide128": {"cluster": "wide128"},
    "wide256": {"cluster": "wide256"},
    # auto's rule from a deeper cut: groups of ≥ 256 channels keeping ≥ 60% / 50% of them
    "cut60": {"cluster": "cut60"},
    "cut50": {"cluster": "cut50"},
    # channel counts in multiples of 8 (round_to; fast kernels, docs/getting-started.md
    # "How much faster"): what the rounding costs in accuracy at the same budget
    "round8": {"round_to": 8},
    # every channel behind a ReLU-like activation rescaled (function-preserving) so its γ/β
    # and its consumer columns have equal norms before clustering (tuneless.rescale)
    "balance": {"balance": True},
    # Residual streams lose stream_share × the ratio of the other groups (1: uniform)
    "streams-0.5": {"stream_share": 0.5},
    "streams-0.25": {"stream_share": 0.25},
    "streams-0": {"stream_share": 0.0},
    "streams-1": {"stream_share": 1.0},
    # per-group widths from the measured output damage of folding each group alone, on the
    # repair's images (data repairs) or pink noise (data-free); tuneless.allocation
    "sens": {"allocation": "sensitivity", "keep_floor": 0.5},
    # the same, every group kept at 3/4 (not 1/2) of its uniform width: how far the
    # one-group-at-a-time measurements are trusted at extreme budgets
    "sens75": {"allocation": "sensitivity", "keep_floor": 0.75},
    # allocation="auto" (measured widths where they were measured to win, its default floor)
    "auto-alloc": {"allocation": "auto"},
    # the points are fractions of the FLOPs removed (budget="flops"), uniform or auto widths
    # (docs/results/fold-flops-* ran flops-auto at 95c6056, where auto measured the widths
    # of Fold-AR and Fold-R under a FLOP budget; since then Fold-R's only)
    "flops-uniform": {"budget": "flops", "allocation": "uniform"},
    "flops-auto": {"budget": "flops", "allocation": "auto"},
    # measured widths under a FLOP budget whatever the repair (what flops-auto ran for every
    # repair at 95c6056; auto now measures Fold-R's only)
    "flops-sens75": {"budget": "flops", "allocation": "sensitivity", "keep_floor": 0.75},
    # the LLM fold's two steps (fold_llm(steps=2)) on a CNN: half the budget folded and
    # repaired, then the rest (the script's _two_steps), default allocation both times
    "steps2": {"steps": 2, "allocation": "auto"},
}
# every variant but "default" folds with uniform widths unless it names an allocation (the
# rows of the variants before allocation="auto" became the default were uniform)
UNIFORM = {"allocation": "uniform"}
# Baselines on the same per-group widths: "repairs" that prune by L1 norm with the variant's
# stream_share, then nothing ("l1"), BN re-estimated on the same images, or refit on them
PRUNE_REPAIRS = ("l1", "l1-bn", "l1-match", "l1-refit", "l1-self", "l1-dir-match",
                 "l1-noise-match")
# "self" (and "l1-self": L1 pruning + the same refit) refits on DeepInversion images of the
# dense model; they depend only on the model, the seed and the inversion settings, so they
# are synthesised once per (checkpoint, seed, settings) and handed to repair="refit" — the
# same computation as fold(repair="self") (tests/test_layer_refit.py checks it); each
# row's seconds include the synthesis
SYNTH_REPAIRS = ("self", "l1-self", "dir-match", "l1-dir-match", "dir-cached")
# data-free statistics matching: the dense model's per-channel BN outputs matched on
# DeepInversion images ("dir-match") or on Gaussian noise of the input's shape
# ("noise-match"), then re-estimated on them (repair "match" given those images)
NOISE_REPAIRS = ("noise-match", "l1-noise-match")
# "dir-cached" is Fold-DIR (BN re-estimation) on the same cached images as "dir-match"
FOLD_REPAIR = {"self": "refit", "dir-match": "match", "noise-match": "match",
               "dir-cached": "data"}
FIELDS = ["model", "variant", "repair", "point", "seed", "accuracy", "achieved", "seconds",
          "dense_acc", "test_images", "commit"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="*")
    p.add_argument("--ratio", choices=["channel", "sparsity"], default="sparsity",
                   help="points are uniform channel ratios or parameter sparsities")
    p.add_argument("--points", default="0.3,0.5,0.7")
    p.add_argument("--repairs", default="ar,data",
                   help="fold repairs: none, ar, dir, data, match, refit, self; L1 pruning + a "
                        "repair: l1, l1-bn, l1-match, l1-refit, l1-self")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--repair-images", type=int, default=1024)
    p.add_argument("--view", choices=["train", "plain"], default="train",
                   help="data repairs see the images augmented as training fed them, or plain")
    p.add_argument("--test-images", type=int, default=None,
                   help="a seeded subset of the test split (default: all of it)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/results/fold-defaults")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--script", default="benchmarks/fold_defaults.sh",
                   help="the script whose command produced --out (named in the table)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out = out.with_suffix("") if out.suffix in (".csv", ".md") else out
    csv_path = out.parent / (out.name + ".csv")  # not with_suffix: "w0.5" is no suffix
    rows = list(csv.DictReader(csv_path.open())) if csv_path.exists() else []
    info = stamp("python " + " ".join(sys.argv))
    if not args.render_only:
        measure(args, rows, csv_path, info)
    atomic_write_text(render(rows, info, args.script), out.parent / (out.name + ".md"))
    return 0


def measure(args, rows: list[dict], csv_path: Path, info: dict) -> None:
    done = {(r["model"], r["variant"], r["repair"], r["point"], r["seed"]) for r in rows}
    points = [float(s) for s in args.points.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    for path in args.checkpoints:
        model, arch, ds = load_any(path)
        label = Path(path).stem + ("" if args.view == "train" else " (plain images)")
        test = get_dataset(ds, "test")
        if args.test_images:
            test = test.subset(args.test_images)
        train = get_dataset(ds, "train").subset(args.repair_images, seed=1)
        real = train.training_view(training_pad(path) if args.view == "train" else None, seed=2)
        x = test.tensors(8)[0]
        dense = None
        for repair in args.repairs.split(","):
            for variant in args.variants.split(","):
                for pt in points:
                    for seed in seeds:
                        key = (label, variant, repair, f"{pt}", f"{seed}")
                        if key in done:
                            continue
                        if dense is None:
                            dense = accuracy(model, test)
                        kw = {"channel_ratio" if args.ratio == "channel" else "sparsity": pt}
                        opts = ({} if variant == "default" else dict(UNIFORM)) | VARIANTS[variant]
                        if repair == "none":  # Fold-Naive never fused BN, in any version
                            opts["fuse_bn"] = False
                        t0 = time.perf_counter()
                        if repair in PRUNE_REPAIRS and seed != seeds[0]:
                            continue  # L1 pruning is deterministic
                        try:
                            synth = 0.0
                            if repair in SYNTH_REPAIRS:
                                real_or_synth, synth = _self_images(path, model, x, seed, opts)
                            elif repair in NOISE_REPAIRS:
                                real_or_synth = _noise(x, seed)
                            else:
                                real_or_synth = real
                            t0 = time.perf_counter()  # the synthesis counts once, as `synth`
                            fold_repair = FOLD_REPAIR.get(repair, repair)
                            if repair == "self":  # fold(repair="self")'s widths: auto
                                opts.setdefault("allocation", "uniform")  # keeps uniform
                            steps = opts.pop("steps", 1)
                            folder = fold if steps == 1 else _two_steps
                            small = (_pruned(model, repair, x, real_or_synth, kw, opts)
                                     if repair in PRUNE_REPAIRS else
                                     folder(model, repair=fold_repair, example_inputs=x,
                                            seed=seed, data=real_or_synth
                                            if get_repair(fold_repair).needs_data else None,
                                            **kw, **opts))
                        except TunelessError as exc:  # e.g. AR on a network without BN
                            print(f"{label} {repair} {variant}: skipped ({exc})", flush=True)
                            break
                        secs = time.perf_counter() - t0 + synth
                        acc = accuracy(small, test)
                        achieved = small.tuneless_report["achieved_sparsity"]
                        rows.append({"model": label, "variant": variant, "repair": repair,
                                     "point": f"{pt}", "seed": f"{seed}",
                                     "accuracy": f"{acc:.4f}",
                                     "achieved": f"{achieved:.4f}",
                                     "seconds": f"{secs:.2f}", "dense_acc": f"{dense:.4f}",
                                     "test_images": str(len(test)), "commit": info["commit"]})
                        print(f"{label} {repair} {variant} {pt} seed {seed}: {acc:.4f} "
                              f"({secs:.1f} s)", flush=True)
                        write_rows(rows, FIELDS, csv_path)


def _two_steps(model, *, sparsity: float, **opts):
    """fold() to half of `sparsity`, repaired, then the result folded to `sparsity` of the
    original's parameters; the report's sparsity is against the original."""
    from tuneless.evaluate import count_params

    mid = fold(model, sparsity=sparsity / 2, **opts)
    n, k = count_params(model), count_params(mid)
    small = fold(mid, sparsity=1 - (1 - sparsity) * n / k, **opts)
    small.tuneless_report["achieved_sparsity"] = 1 - count_params(small) / n
    return small


def _noise(x: torch.Tensor, seed: int, n: int = 128) -> torch.Tensor:
    """n standard-normal inputs shaped like x (the data-free matching's images)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *x.shape[1:]), generator=g)


def _self_images(path: str, model, x, seed: int, opts: dict) -> tuple[torch.Tensor, float]:
    """DeepInversion images for the synthetic-image repairs and the seconds they took."""
    return synthesized(path, model, x, seed, opts.get("inversion", {}))


def _pruned(model, repair: str, x, real, kw: dict, opts: dict):
    """L1 pruning at the variant's per-group widths (with the sensitivity allocation: its own,
    measured on the images its repair sees), then the named data repair."""
    from tuneless.bn_match import match_bn
    from tuneless.layer_refit import refit
    from tuneless.methods.prune import prune
    from tuneless.repair import reestimate_bn

    share = {k: opts[k] for k in ("stream_share", "budget") if k in opts}
    allocation = opts.get("allocation")
    if allocation == "auto":  # what fold's "auto" gives the repairs these rows stand beside
        conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        allocation = "sensitivity" if conv and repair in ("l1", "l1-bn") else "uniform"
    if allocation == "sensitivity":  # its own measured widths, the same probes
        share.update(allocation="sensitivity", data=None if repair == "l1" else real,
                     keep_floor=opts.get("keep_floor"))
    small = prune(model, criterion="l1", example_inputs=x, **share, **kw)  # the fold's widths
    if repair == "l1":
        return small
    if repair == "l1-bn":
        return reestimate_bn(small, real, inplace=True)
    if repair in ("l1-match", "l1-dir-match", "l1-noise-match"):
        return match_bn(model, small, real, example_inputs=x, inplace=True)
    return refit(model, small, real, example_inputs=x, inplace=True)


def render(rows: list[dict], info: dict, script: str) -> str:
    cells, secs = defaultdict(list), defaultdict(list)
    for r in rows:
        key = (r["model"], r["repair"], r["variant"], r["point"])
        cells[key].append(float(r["accuracy"]))
        secs[key].append(float(r["seconds"]))
    commits = ", ".join(f"`{c}`" for c in sorted({r["commit"] for r in rows}))
    lines = ["# Fold defaults: which options win, mean ± std over seeds", "",
             f"Rows measured at commit {commits} by the command for this file in "
             f"`{script}` (one thread, machine shared with a training "
             "job and other benchmarks: times are not comparable).", "",
             f"Rendered: {stamp_markdown(info)}", "",
             "Accuracy (%) on the test split (`test_images` in the CSV: 10,000 is all of it), "
             "no fine-tuning; each cell is the mean ± "
             "standard deviation over the seeds (n = number of seeds) and the mean seconds "
             "per compression, repair included.", ""]
    models = sorted({k[0] for k in cells})
    for model in models:
        for repair in sorted({k[1] for k in cells if k[0] == model}):
            pts = sorted({k[3] for k in cells if k[:2] == (model, repair)}, key=float)
            dense = next(r["dense_acc"] for r in rows if r["model"] == model)
            lines += [f"## {model}, repair {repair} (dense {100 * float(dense):.2f}%)", "",
                      "| variant | " + " | ".join(pts) + " |",
                      "|---|" + "---|" * len(pts)]
            known = list(VARIANTS) + sorted({k[2] for k in cells} - set(VARIANTS))  # removed ones
            for v in [v for v in known if any(k[:3] == (model, repair, v) for k in cells)]:
                out = []
                for pt in pts:
                    a = cells.get((model, repair, v, pt), [])
                    if not a:
                        out.append("")
                        continue
                    sd = statistics.stdev(a) if len(a) > 1 else 0.0
                    t = statistics.mean(secs[(model, repair, v, pt)])
                    out.append(f"{100 * statistics.mean(a):.2f} ± {100 * sd:.2f} "
                               f"(n={len(a)}, {t:.0f} s)")
                lines.append(f"| {v} | " + " | ".join(out) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
