"""Why data repairs must see training-time augmentation: BN re-estimation on the dense model.

    python benchmarks/bn_reestimation_view.py [CHECKPOINT ...] [--images 1024]
        [--out docs/results/bn_reestimation_view.md]

Re-estimates every BatchNorm's statistics (tuneless.repair.reestimate_bn, as Fold-R and
L1 + BN do) on the uncompressed model, from training images fed plain, flipped only, or
cropped and flipped as `tuneless train` fed them, and reports test accuracy against the
model's own running statistics. Nothing is compressed: any loss is the repair's own bias.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.suites
from benchmarks.suites.fold_bench import load_any, training_pad
from tuneless.data import get_dataset
from tuneless.evaluate import accuracy
from tuneless.io_atomic import atomic_write_text
from tuneless.provenance import stamp, stamp_markdown
from tuneless.repair import reestimate_bn


def views(train, pad: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(train), generator=g) < 0.5
    flipped = torch.where(flip[:, None, None, None], train.x.flip(3), train.x)
    return {"plain": train.training_view(None), "flip only": train.normalise(flipped),
            f"crop (pad {pad}) + flip, as trained": train.training_view(pad, seed=seed)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="*",
                    default=["models/resnet20-cifar10.pt", "models/vgg11_bn-w0.5-cifar10.pt"])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/results/bn_reestimation_view.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    info = stamp("python benchmarks/bn_reestimation_view.py " + " ".join(sys.argv[1:]))
    lines = ["# BatchNorm re-estimation on the uncompressed model: which images", "",
             stamp_markdown(info),
             f"Each model's BatchNorm statistics re-estimated on {args.images} training images "
             "(cumulative average, batches of 128), nothing compressed; accuracy on the "
             + (f"first {args.test_subset} images of the " if args.test_subset else "full ")
             + "test split. CIFAR-10 is the JPEG copy in ../shared/data, which the models were "
             "trained on.", "",
             "| model | images for the statistics | accuracy | − own statistics (pt) |",
             "|---|---|---:|---:|"]
    for path in args.checkpoints:
        model, arch, ds = load_any(path)
        pad = training_pad(path)
        if pad is None:
            print(f"{path}: trained without augmentation, skipped", flush=True)
            continue
        test = get_dataset(ds, "test")
        if args.test_subset:
            test = test.subset(args.test_subset, seed=args.seed)
        train = get_dataset(ds, "train").subset(args.images, seed=args.seed + 1)
        own = accuracy(model, test)
        lines.append(f"| {Path(path).name} | none (its own running statistics) | "
                     f"{100 * own:.2f}% | |")
        for name, images in views(train, pad, args.seed + 2).items():
            acc = accuracy(reestimate_bn(model, images), test)
            lines.append(f"| {Path(path).name} | {name} | {100 * acc:.2f}% | "
                         f"{100 * (acc - own):+.2f} |")
            print(f"{path}: {name}: {acc:.4f} (own {own:.4f})", flush=True)
        atomic_write_text("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
