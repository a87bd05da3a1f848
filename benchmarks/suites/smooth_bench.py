"""Smooth vs plain training: accuracy after SVD and the pruning/folding baselines, no fine-tuning.

    tuneless bench smooth --plain plain.pt --d1 d1.pt --d2 d2.pt --nuc nuc.pt

For every checkpoint × method × fraction of parameters removed, the test accuracy of the
compressed model (nothing is retrained). Writes NAME.csv, NAME.md (with the spectral comparison
and the provenance stamp), NAME.png (accuracy vs parameters removed) and NAME_spectra.png into
--out-dir. A method that cannot be imported is skipped with a note; a setting a method cannot
reach (e.g. SVD beyond what break-even allows) is recorded with its reason.

Every measured row is also kept in NAME.rows.csv (keyed by label, checkpoint sha256, method,
fraction and --limit): a rerun, e.g. after an interruption or with one more checkpoint once
its training is done, measures only the missing rows. --fresh ignores the kept rows.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from tuneless.errors import TunelessError

DEFAULT_METHODS = ("svd", "magnitude", "prune-l1", "fold-ar")
DEFAULT_SPARSITIES = (0.3, 0.5, 0.7, 0.8)
FIELDS = ["model", "method", "requested", "achieved", "params", "accuracy", "seconds", "note"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    for label in ("plain", "d1", "d2", "nuc"):
        p.add_argument(f"--{label}", metavar="CKPT", help=f"checkpoint trained with {label}"
                       if label != "plain" else "checkpoint trained without a penalty")
    p.add_argument("--model", action="append", default=[], metavar="LABEL=CKPT",
                   help="any further checkpoint, with the label to show (repeatable)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated method names (see tuneless.methods.REGISTRY)")
    p.add_argument("--sparsities", default=",".join(map(str, DEFAULT_SPARSITIES)),
                   help="fractions of parameters to remove")
    p.add_argument("--svd-allocation", default="per-param", choices=["per-param", "sigma"])
    p.add_argument("--repair-images", type=int, default=1024,
                   help="real training images for methods whose repair needs data (Fold-R: "
                        "the checkpoint's training view, as `bench fold`; refit: plain)")
    p.add_argument("--data", help="dataset path (default: the checkpoint's dataset, found locally)")
    p.add_argument("--limit", type=int, help="evaluate on a random N test images (seed 0)")
    p.add_argument("--out-dir", default="docs/results")
    p.add_argument("--name", default="smooth", help="file name stem of the results")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--fresh", action="store_true",
                   help="ignore rows kept from an interrupted or partial earlier run")


def parse_checkpoints(args: argparse.Namespace) -> dict[str, str]:
    models = {label: getattr(args, label) for label in ("plain", "d1", "d2", "nuc")
              if getattr(args, label)}
    for item in args.model:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise TunelessError(f"--model expects LABEL=CKPT, got {item!r}")
        if label in models:
            raise TunelessError(f"label {label!r} given twice")
        models[label] = path
    if not models:
        raise TunelessError("no checkpoints given: pass --plain/--d1/--d2/--nuc or --model L=CKPT")
    for label, path in models.items():
        if not Path(path).is_file():
            raise TunelessError(f"checkpoint for {label!r} not found: {path}")
    return models


def parse_sparsities(text: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 < v < 1 for v in values):
        raise TunelessError(f"--sparsities must be fractions in (0, 1), got {text!r}")
    return values


def load_methods(names: list[str]) -> tuple[dict, dict[str, str]]:
    """Importable methods by name, and a note for each one that is not."""
    from tuneless.methods import REGISTRY, get_method

    found, skipped = {}, {}
    for name in names:
        if name not in REGISTRY:
            raise TunelessError(f"unknown method {name!r}; choose from {', '.join(REGISTRY)}")
        try:
            found[name] = get_method(name)
        except (ImportError, AttributeError) as exc:
            skipped[name] = f"not available in this build ({type(exc).__name__}: {exc})"
    return found, skipped


def repair_views(model: nn.Module, dataset: str, args: argparse.Namespace) -> dict:
    """The same first `--repair-images` training images for every model, in the checkpoint's
    training view and plain; `repair_view` picks per method as `bench fold` does, so
    data-driven rows compare on equal terms."""
    from tuneless.data.loader import get_dataset, recipe_pad

    train = get_dataset(dataset, "train", args.data).subset(args.repair_images, seed=1)
    pad = recipe_pad(model.tuneless_meta.get("train_args"))
    return {"train": train.training_view(pad, seed=2), "plain": train.training_view(None, seed=2)}


def needs_data(method) -> bool:
    """Whether the method's fixed repair (e.g. fold-r's "data") needs real images."""
    from tuneless.repair import get_repair

    repair = getattr(method, "fixed", {}).get("repair")
    return repair is not None and get_repair(repair).needs_data


def compress_and_score(method, name: str, model: nn.Module, sparsity: float, x: torch.Tensor,
                       test, svd_allocation: str, data=None) -> dict:
    from tuneless.evaluate import accuracy, count_params

    opts = {"allocation": svd_allocation} if name == "svd" else {}
    if data is not None:
        opts["data"] = data
    t0 = time.perf_counter()
    try:
        small = method(model, example_inputs=x, sparsity=sparsity, **opts)
    except TunelessError as exc:
        return {"note": str(exc).splitlines()[0][:200], "seconds": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    report = getattr(small, "tuneless_report", {}) or {}
    total = count_params(model)
    kept = count_params(small, nonzero=not report.get("physically_smaller", True))
    return {"achieved": round(1 - kept / total, 4), "params": kept,
            "accuracy": round(accuracy(small, test), 4),
            "seconds": round(seconds, 2), "note": ""}


def run_grid(checkpoints: dict[str, str], methods: dict, sparsities: list[float],
             args: argparse.Namespace) -> tuple[list[dict], dict[str, nn.Module]]:
    from tuneless.checkpoint import file_sha256, load_checkpoint
    from tuneless.commands.compress import repair_view
    from tuneless.data.loader import get_dataset
    from tuneless.evaluate import accuracy, count_params
    from tuneless.zoo import INPUT_SHAPE

    rows, models = [], {}
    kept_path = Path(args.out_dir) / f"{args.name}.rows.csv"
    kept = {} if getattr(args, "fresh", False) else read_kept_rows(kept_path)

    def measured(row: dict, sha: str) -> dict:
        rows.append(row)
        kept[_key(row, sha, args.limit)] = row
        write_kept_rows(kept_path, kept)
        return row

    for label, path in checkpoints.items():
        model = load_checkpoint(path)
        models[label] = model
        sha = file_sha256(path)
        dataset = model.tuneless_meta["dataset"]
        test = get_dataset(dataset, "test", args.data)
        if args.limit:  # a random subset: the CIFAR-10 test split is sorted by class
            test = test.subset(args.limit, seed=0)
        x = torch.randn(1, *INPUT_SHAPE[dataset], generator=torch.Generator().manual_seed(0))
        old = kept.get(_key({"model": label, "method": "dense", "requested": 0.0}, sha,
                            args.limit))
        if old is not None:
            rows.append(old)
        else:
            dense = accuracy(model, test)
            measured({"model": label, "method": "dense", "requested": 0.0, "achieved": 0.0,
                      "params": count_params(model), "accuracy": round(dense, 4),
                      "seconds": 0.0, "note": ""}, sha)
        print(f"{label}: dense accuracy {rows[-1]['accuracy']}", file=sys.stderr, flush=True)
        views = None  # repair images, built when a method first needs them
        for name, method in methods.items():
            for s in sparsities:
                old = kept.get(_key({"model": label, "method": name, "requested": s}, sha,
                                    args.limit))
                if old is not None and "accuracy" in old:  # rows without a number: retried
                    rows.append(old)
                    continue
                real = None
                if needs_data(method):
                    views = views or repair_views(model, dataset, args)
                    real = views[repair_view("auto", name)]
                r = measured({"model": label, "method": name, "requested": s,
                              **compress_and_score(method, name, model, s, x, test,
                                                   args.svd_allocation, real)}, sha)
                acc = r.get("accuracy")
                print(f"  {name} @ {s:.0%}: " + (f"{acc:.4f} (removed {r['achieved']:.1%})"
                      if acc is not None else f"n/a: {r['note']}"), file=sys.stderr, flush=True)
    return rows, models


def pivot_markdown(rows: list[dict], sparsities: list[float]) -> str:
    """Accuracy per (model, method) × requested sparsity; achieved shown when off by > 1 pt."""
    head = "| model | method | dense | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |"
    lines = [head, "|---|---|---:|" + "---:|" * len(sparsities)]
    dense = {r["model"]: r["accuracy"] for r in rows if r["method"] == "dense"}
    keys = list(dict.fromkeys((r["model"], r["method"]) for r in rows if r["method"] != "dense"))
    for model, method in keys:
        cells = []
        for s in sparsities:
            r = next((r for r in rows if (r["model"], r["method"], r["requested"]) ==
                      (model, method, s)), None)
            if r is None or r.get("accuracy") is None:
                cells.append("n/a")
                continue
            cell = f"{100 * r['accuracy']:.1f}"
            if abs(r["achieved"] - s) > 0.01:
                cell += f" ({r['achieved']:.0%} removed)"
            cells.append(cell)
        lines.append(f"| {model} | {method} | {100 * dense[model]:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_accuracy(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"))
    labels = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(3.6 * max(1, len(methods)), 3.2),
                             squeeze=False, sharey=True)
    for ax, method in zip(axes.flat, methods):
        for label in labels:
            pts = [(0.0, r["accuracy"]) for r in rows if r["model"] == label and
                   r["method"] == "dense"]
            pts += [(r["achieved"], r["accuracy"]) for r in rows if r["model"] == label and
                    r["method"] == method and r.get("accuracy") is not None]
            pts.sort()
            ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=label)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("% of parameters removed", fontsize=8)
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel("test accuracy (%)", fontsize=8)
    axes.flat[0].legend(fontsize=7)
    from tuneless.report import save_figure

    save_figure(fig, path, dpi=110)


def _key(row: dict, sha: str, limit) -> tuple:
    return (row["model"], sha, row["method"], f"{float(row['requested']):.4f}", str(limit))


def read_kept_rows(path: Path) -> dict[tuple, dict]:
    """Rows kept by an earlier run, by key; numbers restored to their types."""
    if not path.is_file():
        return {}
    out = {}
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            sha, limit = r.pop("sha256"), r.pop("limit")
            row = {k: r.get(k, "") for k in FIELDS}
            row["requested"] = float(row["requested"])
            for k, cast in (("achieved", float), ("params", int), ("accuracy", float),
                            ("seconds", float)):
                if row[k] in ("", None):
                    row.pop(k)  # a row with a note has no numbers, as when it was measured
                else:
                    row[k] = cast(row[k])
            out[(row["model"], sha, row["method"], f"{row['requested']:.4f}", limit)] = row
    return out


def write_kept_rows(path: Path, kept: dict[tuple, dict]) -> None:
    from tuneless.io_atomic import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*FIELDS, "sha256", "limit"], extrasaction="ignore")
    writer.writeheader()
    for key, row in kept.items():
        writer.writerow({**row, "sha256": key[1], "limit": key[4]})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(buf.getvalue(), path)


def write_results(rows: list[dict], models: dict[str, nn.Module], checkpoints: dict[str, str],
                  sparsities: list[float], skipped: dict[str, str], args, info: dict) -> Path:
    from tuneless.io_atomic import atomic_write_text
    from tuneless.provenance import stamp_markdown
    from tuneless.spectral import plot_spectra, spectral_markdown

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    buf.write(f"# {info['command']}\n"
              f"# commit {info['commit']}; {info['machine']}; {info['date']}\n")
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), out / f"{args.name}.csv")
    plot_accuracy(rows, out / f"{args.name}.png")
    plot_spectra(models, out / f"{args.name}_spectra.png")
    notes = [f"- `{k}` skipped: {v}" for k, v in skipped.items()]
    notes += [f"- {r['model']} / {r['method']} @ {r['requested']:.0%}: {r['note']}"
              for r in rows if r.get("note")]
    text = "\n".join([
        "# Smooth vs plain training, compressed without fine-tuning", "",
        stamp_markdown(info),
        "Checkpoints: " + ", ".join(f"{k} = `{v}`" for k, v in checkpoints.items()) + ".",
        f"Test accuracy (%) at each requested fraction of parameters removed"
        f"{f' (a random {args.limit} test images)' if args.limit else ''}; SVD allocation "
        f"`{args.svd_allocation}`. Magnitude pruning only zeros weights (counted as non-zeros; "
        "the model is not physically smaller).", "",
        pivot_markdown(rows, sparsities), "",
        f"![accuracy vs parameters removed]({args.name}.png)", "",
        "## Notes", "", *(notes or ["- none"]), "",
        "## Spectra", "", spectral_markdown(models),
        f"![singular values]({args.name}_spectra.png)", "",
    ])
    atomic_write_text(text, out / f"{args.name}.md")
    return out / f"{args.name}.md"


def run(args: argparse.Namespace) -> int:
    from tuneless.provenance import stamp

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoints = parse_checkpoints(args)
    sparsities = parse_sparsities(args.sparsities)
    if args.limit is not None and args.limit < 1:
        raise TunelessError(f"--limit must be positive, got {args.limit}")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods, skipped = load_methods(names)
    info = stamp()
    rows, models = run_grid(checkpoints, methods, sparsities, args)
    md = write_results(rows, models, checkpoints, sparsities, skipped, args, info)
    print(f"wrote {md} (+ .csv, .png, _spectra.png)")
    return 0
