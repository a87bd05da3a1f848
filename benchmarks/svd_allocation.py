"""Which SVD rank allocation keeps more accuracy: per-param or sigma, BN weighting, whitening.

    python benchmarks/svd_allocation.py models/mlp-fashion-mnist.pt
    python benchmarks/svd_allocation.py run.resume.pt --arch resnet20 --dataset cifar10 --append
    python benchmarks/svd_allocation.py models/vgg11_bn-w0.5-cifar10.pt --variants whiten

For each fraction of parameters removed, the test accuracy (no fine-tuning) of svd(...) with
allocation "per-param" (energy lost per parameter saved) and "sigma" (normalised σ² alone), each
with weighting "none" and "bn" (error measured after the following BatchNorm); --variants
whiten compares the input whitenings instead (per-param allocation): none, "bn" (data-free,
from the BatchNorm each layer reads), "dir" (data-free: the second moment on the model's
own DeepInversion images, Fold-DIR's defaults, seed --seed; synthesised once and shared by
the rows, as svd(whiten="dir", seed=) would make them) and "data" (on --whiten-images
training images, plain view), each with and without the output-side BN weighting.
Accepts anything tuneless.modelio.load_model reads (a bare state_dict or a resume file
needs --arch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from tuneless.data.loader import get_dataset
from tuneless.errors import TunelessError
from tuneless.evaluate import accuracy
from tuneless.io_atomic import atomic_write_text
from tuneless.methods.svd import svd
from tuneless.modelio import load_model
from tuneless.provenance import stamp, stamp_markdown

VARIANTS = {
    "allocation": [("per-param", "none", "none"), ("sigma", "none", "none"),
                   ("per-param", "bn", "none"), ("sigma", "bn", "none")],
    "whiten": [("per-param", w, wh) for wh in ("none", "bn", "dir", "data")
               for w in ("none", "bn")],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--arch", help="architecture, for a bare state_dict / resume file")
    ap.add_argument("--arch-kwargs", default=None)
    ap.add_argument("--dataset", help="default: the checkpoint's dataset")
    ap.add_argument("--sparsities", default="0.3,0.5,0.7")
    ap.add_argument("--limit", type=int, default=None,
                    help="a random subset of N test images (seed 0)")
    ap.add_argument("--out", default="docs/results/svd_allocation.md")
    ap.add_argument("--append", action="store_true", help="add a section to an existing --out")
    ap.add_argument("--variants", choices=sorted(VARIANTS), default="allocation")
    ap.add_argument("--whiten-images", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0, help="DeepInversion seed (whiten dir)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    info = stamp("python benchmarks/svd_allocation.py " + " ".join(sys.argv[1:]))
    model = load_model(args.model, arch=args.arch, arch_kwargs=args.arch_kwargs).eval()
    dataset = args.dataset or (getattr(model, "tuneless_meta", None) or {}).get("dataset")
    if dataset is None:
        raise TunelessError("the model does not name its dataset: pass --dataset")
    test = get_dataset(dataset, "test")
    if args.limit:  # a random subset: the CIFAR-10 test split is sorted by class
        test = test.subset(args.limit, seed=0)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    dense = accuracy(model, test)
    print(f"dense {dense:.4f}", file=sys.stderr, flush=True)
    images = {}
    if args.variants == "whiten":
        images["data"] = get_dataset(dataset, "train").subset(args.whiten_images,
                                                              seed=1).tensors()[0]
        from tuneless.deepinversion import synthesize

        images["dir"] = synthesize(model, test.tensors(8)[0], seed=args.seed)
    head = ("| allocation | weighting | whiten | " + " | ".join(f"{s:.0%}" for s in sparsities)
            + " |")
    lines = [head, "|---|---|---|" + "---:|" * len(sparsities)]
    for allocation, weighting, whiten in VARIANTS[args.variants]:
        cells = []
        for s in sparsities:
            try:
                data = images.get(whiten)
                small = svd(model, sparsity=s, allocation=allocation, weighting=weighting,
                            whiten="data" if whiten == "dir" else whiten, data=data,
                            whiten_images=len(data) if data is not None else 256)
            except TunelessError as exc:
                cells.append(f"n/a ({exc})")
                continue
            acc = accuracy(small, test)
            cells.append(f"{100 * acc:.2f}")
            print(f"{allocation} {weighting} {whiten} {s}: {acc:.4f}", file=sys.stderr,
                  flush=True)
        lines.append(f"| {allocation} | {weighting} | {whiten} | " + " | ".join(cells) + " |")
    images = f"a random {args.limit} of the" if args.limit else "all"
    section = "\n".join([
        f"## {Path(args.model).name} ({dataset}, dense {100 * dense:.2f}%)", "",
        stamp_markdown(info),
        f"Test accuracy (%, {images} test images) after SVD, no fine-tuning, by fraction of "
        "parameters removed.", "", *lines, "",
    ])
    out = Path(args.out)
    title = "# SVD rank allocation: per-param vs sigma, BN weighting, input whitening\n\n"
    text = (out.read_text() if args.append and out.exists() else title) + section + "\n"
    atomic_write_text(text, out)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
