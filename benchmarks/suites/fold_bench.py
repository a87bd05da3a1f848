"""`tuneless bench fold`: accuracy against parameters removed, folding vs pruning, no fine-tuning.

For each checkpoint and sparsity: Fold-Naive, Fold-AR, Fold-DIR, Fold-R (the default
allocation, uniform and error allocation), IFM, structured L1/L2 (L1 on the same kind of
widths as the fold rows: measured where the default measures them, and uniform), L1 + the
same BN re-estimation as Fold-R,
unstructured magnitude pruning, and (beyond the paper) folding and L1 pruning each
followed by the same least-squares layer refit on the repair images (fold-refit,
fold-refit-error, prune-l1-refit; tuneless.layer_refit), each with its wall time. Writes
CSV, markdown and PNG plots (accuracy vs sparsity; variance ratio per layer) to the output folder.
Rows are written as they finish, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

import torch

from tuneless.commands.compress import repair_view
from tuneless.errors import TunelessError

METHODS = ("fold-naive", "fold-ar", "fold-dir", "fold-r", "fold-ar-error", "fold-r-error",
           "fold-naive-uniform", "fold-ar-uniform", "fold-r-uniform",
           "ifm", "prune-l1", "prune-l2", "prune-l1-bn", "prune-l1-dir", "magnitude",
           "prune-l1-uniform", "prune-l1-bn-uniform",
           "fold-refit", "prune-l1-refit", "fold-refit-uniform", "prune-l1-refit-uniform",
           "fold-refit-error", "fold-ar-unfused", "fold-r-unfused",
           "fold-ar-paper", "fold-r-paper",
           "tp-l1", "tp-l2", "tp-bn", "tp-taylor", "tp-l1-bn", "tp-l2-bn", "tp-bn-bn",
           "tp-taylor-bn")
# The repair each row applies; whether a row needs BatchNorm is the repair's own
# declaration (tuneless.repair.REPAIRS), plus Torch-Pruning's BN-scale criterion.
ROW_REPAIR = {"fold-naive": "none", "fold-ar": "ar", "fold-dir": "dir", "fold-r": "data",
              "fold-ar-error": "ar", "fold-r-error": "data", "fold-ar-unfused": "ar",
              "fold-ar-uniform": "ar", "fold-r-uniform": "data", "prune-l1-bn-uniform": "data",
              "fold-r-unfused": "data", "fold-ar-paper": "ar", "fold-r-paper": "data",
              "prune-l1-bn": "data", "prune-l1-dir": "dir", "fold-refit": "refit",
              "fold-refit-error": "refit", "prune-l1-refit": "refit",
              "fold-refit-uniform": "refit", "prune-l1-refit-uniform": "refit", "tp-l1-bn": "data",
              "tp-l2-bn": "data", "tp-bn-bn": "data", "tp-taylor-bn": "data"}


DIR_ROWS = ("fold-dir", "prune-l1-dir")  # rows on the same DeepInversion images


def dir_settings(args) -> dict:
    """DeepInversion settings of the DIR rows: repair "dir"'s, with the flags given."""
    from tuneless.repair import dir_inversion

    cfg = {**dir_inversion("match"), "num_images": args.dir_images, "batch_size": args.dir_batch}
    cfg.update({k: v for k, v in (("steps", args.dir_steps), ("lr", args.dir_lr))
                if v is not None})
    return cfg


def needs_bn(name: str) -> bool:
    from tuneless.repair import get_repair

    return name.startswith("tp-bn") or get_repair(ROW_REPAIR.get(name, "none")).needs_bn
FIELDS = ["model", "weights", "dense_acc", "method", "requested", "achieved", "params",
          "accuracy", "seconds", "test_images", "commit", "note", "knob"]
# --channel-ratios: the points are the paper's uniform channel ratio r (every reducible
# group loses r of its channels) instead of a parameter budget; the methods that take one
RATIO_METHODS = ("fold-naive", "fold-ar", "fold-r", "fold-refit", "fold-ar-paper",
                 "fold-r-paper", "prune-l1", "prune-l1-bn", "prune-l1-refit",
                 "fold-naive-uniform", "fold-ar-uniform", "fold-r-uniform", "prune-l1-uniform",
                 "prune-l1-bn-uniform", "fold-refit-uniform", "prune-l1-refit-uniform")
# The folding paper's own CNN code on models/vgg11_bn-w0.5-cifar10.pt at r = 0.3 / 0.5 / 0.7,
# full CIFAR-10 JPEG test split, 1,024 training images (crop + flip) for Fold-R: measured
# by an outside check of this project (issue 17), not rerun here; a reference, not a row.
PAPER_CODE_VGG = {"file": "vgg11_bn-w0.5-cifar10.pt",
                  "rows": {"fold-naive": (64.9, 28.5, 12.8), "fold-ar": (74.5, 55.9, 27.0),
                           "fold-r": (79.7, 70.5, 40.0)},
                  "ratios": (0.3, 0.5, 0.7)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", help="tuneless checkpoints, training resume files "
                   "or models saved by tuneless.save with meta={\"dataset\": NAME}")
    p.add_argument("--sparsities", default="0.1,0.3,0.5,0.6,0.7,0.8")
    p.add_argument("--channel-ratios", default=None,
                   help="points are uniform channel ratios (the paper's r) instead of "
                        f"sparsities; methods: {', '.join(RATIO_METHODS)}")
    p.add_argument("--methods", default=None,
                   help="comma-separated rows (default: every method that applies to the "
                        "points: all of them for sparsities, the channel-ratio ones otherwise)")
    p.add_argument("--test-subset", type=int, default=None, help="test images (default: all)")
    p.add_argument("--repair-images", type=int, default=1024,
                   help="real training images for Fold-R and L1+BN")
    p.add_argument("--repair-view", choices=["auto", "train", "plain"], default="auto",
                   help="repair images as the checkpoint's training fed them (its crop/flip "
                        "augmentation) or plain; auto (default): the training view for BN "
                        "re-estimation, plain for the least-squares refit")
    p.add_argument("--dir-images", type=int, default=128)
    p.add_argument("--dir-steps", type=int, default=None,
                   help="DeepInversion steps (default: what repair 'dir' uses)")
    p.add_argument("--dir-lr", type=float, default=None,
                   help="DeepInversion learning rate (default: what repair 'dir' uses)")
    p.add_argument("--dir-batch", type=int, default=64)
    p.add_argument("--features", default="raw", help="fold feature scaling: raw|block|gamma")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/results")
    p.add_argument("--name", default="fold", help="file stem of the outputs")
    p.add_argument("--data", default=None, help="dataset path (default: the project's copy)")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows of an existing <out>/<name>.csv and measure only the "
                        "(checkpoint, method, sparsity) cells it lacks")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite the markdown and accuracy plots from an existing CSV")
    p.add_argument("--measured-by", default=None,
                   help="with --render-only: the command that measured the CSV (for the record)")


def resolve_methods(given: str | None, knob: str) -> list[str]:
    """The rows to run: `given` (comma-separated) checked against the points' knob, or by
    default every method that applies (all for sparsities, RATIO_METHODS for ratios)."""
    default = RATIO_METHODS if knob == "channel_ratio" else METHODS
    methods = [m for m in (given or ",".join(default)).split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise TunelessError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    if knob == "channel_ratio":
        check_ratio_methods(methods)
    return methods


def check_ratio_methods(methods: list[str]) -> None:
    """One-line error for methods that take no uniform channel ratio (--channel-ratios)."""
    bad = [m for m in methods if m not in RATIO_METHODS]
    if bad:
        raise TunelessError(f"{', '.join(bad)}: no channel-ratio mode; with --channel-ratios "
                            f"use {', '.join(RATIO_METHODS)}")


def load_any(path: str) -> tuple[torch.nn.Module, str, str]:
    """A model from a tuneless checkpoint, a `tuneless train` resume file or a model written by
    tuneless.save with meta={"dataset": NAME} (a converted external network) → (model, arch, ds)."""
    from tuneless.checkpoint import is_checkpoint, model_from_checkpoint, read_torch_file
    from tuneless.serialize import FORMAT, model_from_saved
    from tuneless.zoo import ARCH_DATASET, build_model

    obj = read_torch_file(path)
    if is_checkpoint(obj):
        model = model_from_checkpoint(obj, path)
        return model, obj["arch"], obj.get("dataset") or ARCH_DATASET[obj["arch"]]
    if isinstance(obj, dict) and obj.get("format") == FORMAT:  # tuneless.save: any network
        dataset = (obj.get("meta") or {}).get("dataset")
        if dataset is None:
            raise TunelessError(f"{path} is a saved model that records no dataset: save it "
                                "with tuneless.save(model, path, meta={'dataset': NAME})")
        return model_from_saved(obj, path), Path(path).stem, dataset
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        cfg = obj["config"]
        model = build_model(cfg["arch"], **(cfg.get("arch_kwargs") or {}))
        model.load_state_dict(obj["model"])
        model.eval()
        return model, cfg["arch"], cfg.get("dataset") or ARCH_DATASET[cfg["arch"]]
    raise TunelessError(f"{path} is neither a tuneless checkpoint nor a training resume file")


def training_pad(path: str) -> int | None:
    """The crop padding a tuneless checkpoint was trained with (None: no augmentation)."""
    from tuneless.checkpoint import is_checkpoint, read_torch_file
    from tuneless.data.loader import recipe_pad

    obj = read_torch_file(path)
    return recipe_pad(obj.get("train_args") if is_checkpoint(obj) else
                      (obj.get("config") if isinstance(obj, dict) else None))


def compress(name: str, model, sparsity: float, x, repair_images, dir_images, features, seed,
             labelled=None, knob: str = "sparsity"):
    """Run one method; returns the compressed model. `labelled`: (images, labels) of the
    repair images, plain view, for Torch-Pruning's Taylor criterion. knob "channel_ratio":
    `sparsity` is a uniform channel ratio instead (RATIO_METHODS only)."""
    from tuneless.methods.fold import fold
    from tuneless.methods.ifm import ifm
    from tuneless.methods.prune import magnitude_prune, prune
    from tuneless.repair import reestimate_bn

    if knob != "sparsity":
        check_ratio_methods([name])
    common = {knob: sparsity, "example_inputs": x}
    fold_kw = {**common, "features": features, "seed": seed}
    if name.split("-")[0] == "fold" and name.split("-")[1] in ("naive", "ar", "r") and (
            name.count("-") == 1 or name.endswith(("-error", "-uniform"))):
        # the default (allocation "auto": measured widths on CNNs) or the named allocation
        repair = {"naive": "none", "ar": "ar", "r": "data"}[name.split("-")[1]]
        alloc = name.split("-")[2] if name.count("-") == 2 else "auto"
        return fold(model, repair=repair, allocation=alloc,
                    data=repair_images if repair == "data" else None, **fold_kw)
    if name in ("fold-ar-unfused", "fold-r-unfused"):  # the rows of commit 3637b3e: raw
        repair = "ar" if name.startswith("fold-ar") else "data"  # BN-conv, running means in
        return fold(model, repair=repair, fuse_bn=False, norm_stats=True,
                    data=repair_images if repair == "data" else None, **fold_kw)
    if name in ("fold-ar-paper", "fold-r-paper"):  # Algorithm 1's order: BN fused first,
        repair = "ar" if name.startswith("fold-ar") else "data"  # the defaults until 2026-11-30
        return fold(model, repair=repair, fuse_bn=True, norm_stats=True,
                    data=repair_images if repair == "data" else None, **fold_kw)
    if name == "fold-dir":  # images synthesised once per model, reused: repair "dir" on
        return fold(model, repair="match", data=dir_images, **fold_kw)  # them (matching)
    if name == "ifm":
        return ifm(model, **common)
    if name in ("prune-l1", "prune-l2", "prune-l1-uniform"):  # L1: Fold-Naive's kind of widths
        return prune(model, criterion=name[6:8], seed=seed, **common,
                     **_widths_like_fold(model, x, name, "none", None))
    if name in ("fold-refit", "fold-refit-error", "fold-refit-uniform"):  # the default: auto
        alloc = {"fold-refit-error": {"allocation": "error"},
                 "fold-refit-uniform": {"allocation": "uniform"}}.get(name, {})
        return fold(model, repair="refit", data=repair_images, **alloc, **fold_kw)
    if name in ("prune-l1-refit", "prune-l1-refit-uniform"):  # L1 on the refit's kind of widths
        from tuneless.layer_refit import refit

        small = prune(model, criterion="l1", seed=seed, **common,
                      **_widths_like_fold(model, x, name, "refit", repair_images))
        return refit(model, small, repair_images, example_inputs=x, inplace=True)
    if name in ("prune-l1-bn", "prune-l1-bn-uniform"):  # L1 on Fold-R's kind of widths
        small = prune(model, criterion="l1", seed=seed, **common,
                      **_widths_like_fold(model, x, name, "data", repair_images))
        return reestimate_bn(small, repair_images, inplace=True)
    if name == "prune-l1-dir":  # L1 + Fold-DIR's repair on the same DeepInversion images
        from tuneless.bn_match import match_bn

        return match_bn(model, prune(model, criterion="l1", seed=seed, **common), dir_images,
                        example_inputs=x, inplace=True)
    if name == "magnitude":
        return magnitude_prune(model, **common)
    if name.startswith("tp-"):  # Torch-Pruning, same parameter budget (benchmarks.suites.peers)
        from benchmarks.suites.peers import tp_prune

        rest = name[3:]  # "l1", "l1-bn" (then BN re-estimated on the repair images), ...
        reestimate = rest.endswith("-bn")
        small = tp_prune(model, sparsity, rest[:-3] if reestimate else rest, x, labelled)
        if small(x).shape != model(x).shape:
            raise TunelessError("Torch-Pruning's result changed the output shape")
        return reestimate_bn(small, repair_images, inplace=True) if reestimate else small
    raise TunelessError(f"unknown benchmark method {name!r}; choose from {', '.join(METHODS)}")


def _widths_like_fold(model, x, name: str, repair: str, images) -> dict:
    """prune() options for an L1 row on equal terms with the fold row of the same repair:
    its own measured widths (probed on the same images) where the fold's default allocation
    measures them, uniform widths for the "-uniform" rows and elsewhere."""
    from tuneless.graph import find_groups
    from tuneless.methods.fold import FoldOptions, resolved_allocation

    if name.endswith("-uniform") or name == "prune-l2":
        return {}
    opts = FoldOptions(sparsity=0.5, repair=repair)
    if resolved_allocation(model, find_groups(model, x), opts, x) != "sensitivity":
        return {}
    return {"allocation": "sensitivity", "data": images}


def run(args) -> int:
    from tuneless.data import get_dataset
    from tuneless.deepinversion import synthesize
    from tuneless.evaluate import accuracy, count_params
    from tuneless.provenance import stamp
    from tuneless.repair import batchnorms

    torch.set_num_threads(args.threads)
    info = stamp()
    if args.render_only:
        rows = read_rows(Path(args.out) / f"{args.name}.csv")
        _write(Path(args.out), args.name, rows, {}, info, args, write_csv=False)
        return 0
    knob = "channel_ratio" if args.channel_ratios else "sparsity"
    sparsities = [float(s) for s in (args.channel_ratios or args.sparsities).split(",") if s]
    methods = resolve_methods(args.methods, knob)
    out = Path(args.out)
    rows: list[dict] = []
    if args.resume and (out / f"{args.name}.csv").exists():
        rows = read_rows(out / f"{args.name}.csv")
        print(f"resuming: {len(rows)} rows from {out / f'{args.name}.csv'}", flush=True)
    done = {(r["weights"], r["method"], float(r["requested"]), r.get("knob", "sparsity"))
            for r in rows}
    curves: dict[str, dict[str, dict[str, float]]] = {}
    for path in args.checkpoints:
        model, arch, ds = load_any(path)
        test = get_dataset(ds, "test", args.data)
        if args.test_subset:
            test = test.subset(args.test_subset, seed=args.seed)
        train = get_dataset(ds, "train", args.data).subset(args.repair_images, seed=args.seed + 1)
        pad = training_pad(path)
        views = {"train": train.training_view(pad, seed=args.seed + 2),
                 "plain": train.training_view(None, seed=args.seed + 2)}
        labelled = train.tensors()  # plain view, for Torch-Pruning's Taylor criterion
        x = test.tensors(8)[0]
        pending = [(sp, m) for sp in sparsities for m in methods
                   if (path, m, sp, knob) not in done]
        if not pending:
            print(f"{path}: every cell already measured", flush=True)
            continue
        earlier = [r for r in rows if r["weights"] == path and r.get("test_images") == len(test)]
        dense = float(earlier[0]["dense_acc"]) if earlier else accuracy(model, test)
        label = f"{arch} ({Path(path).name})"
        print(f"{label}: dense accuracy {dense:.4f} on {len(test)} test images", flush=True)
        has_bn = bool(batchnorms(model))
        dir_images, dir_seconds = None, 0.0
        if has_bn and any(m in DIR_ROWS for _, m in pending):
            t0 = time.perf_counter()
            dir_images = synthesize(model, x, **dir_settings(args), seed=args.seed)
            dir_seconds = time.perf_counter() - t0
            print(f"  DeepInversion: {args.dir_images} images in {dir_seconds:.0f} s", flush=True)
        base = {"model": label, "weights": path, "dense_acc": round(dense, 4),
                "test_images": len(test), "commit": info["commit"]}
        for sp, name in pending:
            row = {**base, "method": name, "requested": sp, "knob": knob}
            if needs_bn(name) and not has_bn:
                rows.append({**row, "note": "n/a: no BatchNorm"})
                continue
            t0 = time.perf_counter()
            try:
                real = views[repair_view(args.repair_view, name)]
                small = compress(name, model, sp, x, real, dir_images, args.features,
                                 args.seed, labelled=labelled, knob=knob)
            except (TunelessError, RuntimeError) as exc:  # a peer's model that does not run
                rows.append({**row, "note": f"failed: {exc}"})
                continue
            secs = time.perf_counter() - t0 + (dir_seconds if name in DIR_ROWS else 0.0)
            nonzero = name == "magnitude"
            params = count_params(small, nonzero=nonzero)
            achieved = 1 - params / count_params(model)
            acc = accuracy(small, test)
            note = "incl. DeepInversion time" if name in DIR_ROWS else ""
            note = getattr(small, "tp_note", note)  # a Torch-Pruning fallback, if taken
            rows.append({**row, "achieved": round(achieved, 4), "params": params,
                         "accuracy": round(acc, 4), "seconds": round(secs, 2), "note": note})
            print(f"  {name:14s} {sp:.2f} → {achieved:.3f} removed, acc {acc:.4f}, "
                  f"{secs:.1f} s", flush=True)
            if knob == "sparsity" and abs(sp - 0.5) < 1e-9 and name in (
                    "fold-naive", "fold-ar", "fold-dir", "fold-r"):
                from tuneless.diagnostics import variance_ratio

                curves.setdefault(label, {})[name] = variance_ratio(
                    model, small, test.tensors(256)[0])
            _write(out, args.name, rows, curves, info, args)
    _write(out, args.name, rows, curves, info, args)
    print(f"wrote {out}/{args.name}.csv, .md and plots", flush=True)
    return 0


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise TunelessError(f"no results to render: {path} does not exist")
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            row = {k: v for k, v in r.items() if v != ""}
            for k in ("dense_acc", "requested", "achieved", "accuracy", "seconds"):
                if k in row:
                    row[k] = float(row[k])
            for k in ("params", "test_images"):
                if k in row:
                    row[k] = int(row[k])
            rows.append(row)
    return rows


def _write(out: Path, stem: str, rows, curves, info, args, write_csv: bool = True) -> None:
    from tuneless.io_atomic import atomic_write_text

    if write_csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(buf.getvalue(), out / f"{stem}.csv")
    budget = [r for r in rows if r.get("knob", "sparsity") == "sparsity"]
    ratio = [r for r in rows if r.get("knob") == "channel_ratio"]
    text = markdown(budget, info, args) if budget else ratio_header(info)
    atomic_write_text(text + (ratio_markdown(ratio) if ratio else ""), out / f"{stem}.md")
    if budget:
        _plots(out, stem, budget, curves)


def ratio_header(info) -> str:
    from tuneless.provenance import stamp_markdown

    return "\n".join(["# Folding benchmark at uniform channel ratios", "",
                      stamp_markdown(info), "", "No fine-tuning anywhere.", ""]) + "\n"


def ratio_markdown(rows) -> str:
    """Rows of --channel-ratios: accuracy per method and ratio, and where the checkpoint is
    the one the folding paper's own code was run on, that code's numbers beside them."""
    ref = PAPER_CODE_VGG
    lines = ["## Accuracy at uniform channel ratios (the paper's r)", "",
             "Every reducible group loses r of its channels (`channel_ratio=r`); in brackets "
             "the fraction of parameters that removes. One seed per row (`--seed`).", ""]
    for weights in sorted({r["weights"] for r in rows}):
        rs = [r for r in rows if r["weights"] == weights]
        ratios = sorted({float(r["requested"]) for r in rs})
        cell = {(r["method"], float(r["requested"])): r for r in rs}
        lines += [f"### {rs[0]['model']} (dense {100 * float(rs[0]['dense_acc']):.2f}% on "
                  f"{rs[0]['test_images']} test images)", "",
                  "| method | " + " | ".join(f"r = {x:g}" for x in ratios) + " |",
                  "|---|" + "---|" * len(ratios)]
        for m in [m for m in RATIO_METHODS if any(r["method"] == m for r in rs)]:
            out = []
            for x in ratios:
                r = cell.get((m, x))
                out.append("" if r is None else r.get("note", "") if "accuracy" not in r else
                           f"{100 * float(r['accuracy']):.2f} "
                           f"({100 * float(r['achieved']):.0f}%)")
            lines.append(f"| {m} | " + " | ".join(out) + " |")
        shown = [x for x in ratios if any(abs(x - y) < 1e-9 for y in ref["ratios"])]
        if Path(weights).name != ref["file"] or not shown:
            lines.append("")
            continue
        lines += ["", "The folding paper's own CNN code on this checkpoint, as an outside check "
                  "measured it (issue 17: the full test split, 1,024 training images with crop "
                  "and flip for Fold-R; reference numbers, not rerun here"
                  + ("" if int(rs[0]["test_images"]) == 10000 else
                     "; this run used a test subset, so compare with care") + "):", "",
                  "| | " + " | ".join(f"r = {x:g}" for x in shown) + " |",
                  "|---|" + "---|" * len(shown)]
        for m, ref_acc in ref["rows"].items():
            paper = [ref_acc[[round(y, 6) for y in ref["ratios"]].index(round(x, 6))]
                     for x in shown]
            lines.append(f"| paper's code, {m} | " + " | ".join(f"{a:.1f}" for a in paper)
                         + " |")
            ours = [cell.get((m, x)) for x in shown]
            if any(r is not None and "accuracy" in r for r in ours):
                lines.append(f"| {m} here − paper's code | " + " | ".join(
                    "" if r is None or "accuracy" not in r else
                    f"{100 * float(r['accuracy']) - a:+.1f}" for r, a in zip(ours, paper))
                    + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def markdown(rows, info, args) -> str:
    from tuneless.provenance import stamp_markdown

    lines = ["# Folding benchmark: accuracy vs fraction of parameters removed", "",
             stamp_markdown(info), ""]
    commits = sorted({r.get("commit") or "not recorded" for r in rows})
    if len(commits) > 1 or (commits and commits[0] != info["commit"]):
        lines += [f"Rows measured at commits {', '.join(f'`{c}`' for c in commits)} "
                  "(runs resumed with `--resume`; the CSV's `commit` column says which).", ""]
    if getattr(args, "render_only", False):
        lines += [f"Rendered from `{args.name}.csv`, which was measured by "
                  f"`{args.measured_by or 'an earlier run (command not given)'}`.", ""]
    lines += [
             "No fine-tuning anywhere. Fold-R and L1+BN re-estimate BatchNorm statistics on "
             f"{args.repair_images} real training images"
             + {"train": " augmented as in training (random crop and flip; plain images cost "
                         "the dense ResNet-20 2.9 points)",
                "plain": " (plain, not augmented)",
                "auto": " augmented as in training (random crop and flip, where the "
                        "checkpoint records them; plain otherwise) for BN "
                        "re-estimation, plain for the refit rows (the better view of each, "
                        "docs/folding.md)"}[getattr(args, "repair_view", "plain")]
             + f"; Fold-DIR (and L1 + the same repair, `prune-l1-dir`) on {args.dir_images} "
             f"DeepInversion images ({dir_settings(args)['steps']} steps) synthesised once "
             "per model from the uncompressed network, BN statistics matched to the "
             "uncompressed network's on them (its time is included in every such row). "
             "`fold-refit`, `fold-refit-error` and `prune-l1-refit` (beyond the paper) "
             "re-solve every conv and "
             "linear layer by least squares on (up to the first 1,024 of) those images "
             "(tuneless.layer_refit). "
             "`magnitude` is unstructured (zeros, not smaller). Cells: accuracy (achieved "
             "fraction removed, seconds).", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mrows = [r for r in rows if r["model"] == model]
        sps = sorted({r["requested"] for r in mrows})
        slug = model.split(" ")[0]
        on = (" of the CIFAR-10 JPEG copy in ../shared/data (trained on its train split; "
              "JPEG costs a model trained on the original files about 10 points)"
              if _is_cifar(mrows[0]) else "")
        lines += [f"## {model}", "", f"Weights `{mrows[0]['weights']}`, dense accuracy "
                  f"{mrows[0]['dense_acc']:.4f} on {mrows[0]['test_images']} test images{on}.",
                  "", f"![accuracy vs parameters removed]({args.name}-{slug}-accuracy.png)", "",
                  "| method | " + " | ".join(f"{s:.0%}" for s in sps) + " |",
                  "|---|" + "---|" * len(sps)]
        for method in dict.fromkeys(r["method"] for r in mrows):
            cells = []
            for s in sps:
                r = next((r for r in mrows if r["method"] == method and r["requested"] == s),
                         None)
                if r is None:
                    cells.append("")
                elif "accuracy" in r:
                    cells.append(f"{r['accuracy']:.4f} ({r['achieved']:.2f}, {r['seconds']:.0f}s)")
                else:
                    cells.append(r.get("note", "")[:40])
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", *comparisons(mrows, sps), ""]
        if (Path(args.out) / f"{args.name}-{slug}-variance.png").exists():
            lines += ["Variance collapse (Var folded / Var original per layer, at 50% removed): "
                      f"![variance ratio]({args.name}-{slug}-variance.png)", ""]
    lines += [REFERENCE]
    return "\n".join(lines) + "\n"


def _is_cifar(row: dict) -> bool:
    from tuneless.zoo import ARCH_DATASET

    arch = row["model"].split(" ")[0]
    return ARCH_DATASET.get(arch) == "cifar10" or "cifar" in str(row["weights"]).lower()


REFERENCE = (
    "Reference (METHODS.md §3, an independent rerun of the paper's code on a CIFAR-10 "
    "ResNet-18, 94.6% dense; Naive / AR / R): 44% removed 84.4 / 91.0 / 92.2; 58% 69.2 / "
    "81.9 / 89.3; 70% 28.5 / 70.7 / 84.3. The paper: at 70% folding keeps > 80% while L1/L2 "
    "pruning is near chance. Those are larger, more redundant networks than the ones here; "
    "compare the ordering and the gaps, not the absolute numbers."
)


def comparisons(mrows, sps) -> list[str]:
    """The issue's comparisons, in points, per sparsity (only where both sides were measured)."""
    acc = {(r["method"], r["requested"]): r["accuracy"] for r in mrows if "accuracy" in r}
    pairs = [("fold-ar", "prune-l1", "Fold-AR − L1"),
             ("fold-r", "prune-l1-bn", "Fold-R − (L1 + same BN re-estimation)"),
             ("fold-ar", "fold-ar-uniform", "default − uniform allocation (AR)"),
             ("fold-r", "fold-r-uniform", "default − uniform allocation (R)"),
             ("fold-naive", "fold-naive-uniform", "default − uniform allocation (Naive)"),
             ("fold-r-uniform", "prune-l1-bn-uniform",
              "uniform widths: Fold-R − (L1 + same BN re-estimation)"),
             ("fold-ar-error", "fold-ar-uniform", "error − uniform allocation (AR)"),
             ("fold-r-error", "fold-r-uniform", "error − uniform allocation (R)"),
             ("fold-refit", "prune-l1-refit", "Fold-refit − (L1 + same refit)"),
             ("fold-refit-error", "fold-refit", "error − uniform allocation (refit)"),
             ("fold-ar-unfused", "fold-ar", "Fold-AR unfused − fused"),
             ("fold-r-unfused", "fold-r", "Fold-R unfused − fused"),
             ("fold-r-unfused", "prune-l1-bn", "Fold-R unfused − (L1 + same BN re-estimation)")]
    out = ["| comparison (points) | " + " | ".join(f"{s:.0%}" for s in sps) + " |",
           "|---|" + "---|" * len(sps)]
    for a, b, label in pairs:
        cells = [f"{100 * (acc[(a, s)] - acc[(b, s)]):+.1f}" if (a, s) in acc and (b, s) in acc
                 else "" for s in sps]
        if any(cells):
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for s in sps:
        free = [acc[(m, s)] for m in ("fold-ar", "fold-dir") if (m, s) in acc]
        cells.append(f"{100 * (max(free) - acc[('fold-r', s)]):+.1f}"
                     if free and ("fold-r", s) in acc else "")
    if any(cells):
        out.append("| best data-free (AR or DIR) − Fold-R | " + " | ".join(cells) + " |")
    dense = mrows[0]["dense_acc"]
    for m, label in (("fold-r", "Fold-R − dense"), ("fold-r-error", "Fold-R error-alloc − dense"),
                     ("fold-refit", "Fold-refit − dense"),
                     ("fold-refit-error", "Fold-refit error-alloc − dense")):
        cells = [f"{100 * (acc[(m, s)] - dense):+.1f}" if (m, s) in acc else "" for s in sps]
        if any(cells):
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def _plots(out: Path, stem: str, rows, curves) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tuneless.diagnostics import plot_variance_ratio
    from tuneless.io_atomic import atomic_write_bytes

    for model in dict.fromkeys(r["model"] for r in rows):
        mrows = [r for r in rows if r["model"] == model and "accuracy" in r]
        if not mrows:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method in dict.fromkeys(r["method"] for r in mrows):
            pts = sorted((r["achieved"], r["accuracy"]) for r in mrows if r["method"] == method)
            ax.plot(*zip(*pts), marker="o", label=method)
        ax.axhline(mrows[0]["dense_acc"], color="grey", ls="--", lw=0.8, label="dense")
        ax.set_xlabel("fraction of parameters removed")
        ax.set_ylabel("test accuracy")
        ax.set_title(model)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        slug = model.split(" ")[0]
        atomic_write_bytes(buf.getvalue(), out / f"{stem}-{slug}-accuracy.png")
        if model in curves:
            plot_variance_ratio(curves[model], out / f"{stem}-{slug}-variance.png",
                                title=f"{model}: variance ratio per layer at 50% removed")
