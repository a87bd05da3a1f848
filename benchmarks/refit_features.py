"""Fold + refit with clustering features from the refit images' activations (issue 17's
"activation-aware clustering for CNNs", here with the data the refit already has) against
the raw-weight features of the default and L1 + the same refit.

Variants (each channel's feature row; activations at 4,096 fixed random (image, position)
samples of the first `--act-images` refit images, taken from the uncompressed network):

* raw: the default (`channel_features`: conv rows, BN γ/β, consumer columns);
* act: every producer's BN output (pre-activation) for that channel, side by side;
* relu: the same clamped at 0; relucol: relu × the norm of the channel's consumer columns;
* incol: what each consumer actually reads for that channel × that consumer's column norm
  (the stream after the add and ReLU, for a residual group);
* mix / mixcol / mixin: the raw features and relu / relucol / incol, each block scaled to
  unit mean row norm, side by side.

    python benchmarks/refit_features.py models/resnet20-cifar10.pt --points 0.1,0.3 \\
        --variants raw,relucol,mixcol,incol,mixin --l1

Same protocol as `bash benchmarks/fold_refit.sh`: 1,024 plain training images (subset seed
1), the first 2,000 test images of a seeded subset. The features are patched into
`tuneless.methods.fold.channel_features` here, not options of tuneless.fold
(docs/folding.md, "Activation features for the refit", says what they gave).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.suites

import tuneless.methods.fold as fold_module  # noqa: E402
from benchmarks.suites.fold_bench import load_any  # noqa: E402
from tuneless.data import get_dataset  # noqa: E402
from tuneless.evaluate import accuracy  # noqa: E402

RAW = fold_module.channel_features
VARIANTS = ("raw", "act", "relu", "relucol", "mix", "mixcol", "incol", "mixin")
STATE: dict = {}


def sampled(model: nn.Module, images: torch.Tensor, types, pre: bool,
            n_samples: int = 4096, seed: int = 0) -> dict[str, torch.Tensor]:
    """{module name: (channels, n_samples)} of each module's output (or, `pre`, its input)
    at the same random (image, position) samples."""
    seen: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        def hook(mod, inp, out=None):
            seen.setdefault(name, []).append((inp[0] if pre else out).detach())
        return hook

    hooks = [(m.register_forward_pre_hook(keep(n)) if pre else m.register_forward_hook(keep(n)))
             for n, m in model.named_modules() if isinstance(m, types)]
    with torch.no_grad():
        for i in range(0, len(images), 128):
            model(images[i:i + 128])
    for h in hooks:
        h.remove()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, chunks in seen.items():
        y = torch.cat(chunks)
        y = y.transpose(0, 1).reshape(y.shape[1], -1)  # (channels, images × positions)
        idx = torch.randint(y.shape[1], (min(n_samples, y.shape[1]),), generator=g)
        out[name] = y[:, idx].float()
    return out


def unit(b: torch.Tensor) -> torch.Tensor:
    """b scaled to unit mean row norm."""
    nb = b.pow(2).sum().div(b.shape[0]).sqrt()
    return b / nb if nb > 0 else b


def column_norms(model: nn.Module, slot, n: int) -> torch.Tensor:
    return slot.channel_rows(model, n).float().pow(2).sum(1).sqrt()


def features(model: nn.Module, group, mode: str = "raw", norm_stats: bool = True):
    variant, n = STATE["variant"], group.n
    raw = RAW(model, group, mode, norm_stats)
    if variant == "raw":
        return raw
    if variant in ("incol", "mixin"):
        reads = STATE["inputs"]
        f = torch.cat([reads[s.module][s.offset * s.block:(s.offset + n) * s.block]
                       .reshape(n, -1) * column_norms(model, s, n).unsqueeze(1)
                       for s in group.consumers], 1)
        return f if variant == "incol" else torch.cat([unit(raw), unit(f)], 1)
    norm_of = {s.producer: s.module for s in group.slots if s.kind == "norm" and s.producer}
    outs = STATE["outputs"]
    z = torch.cat([outs[norm_of.get(s.module, s.module)][s.offset * s.block:][:n]
                   for s in group.producers], 1)
    f = z if variant == "act" else z.clamp_min(0)
    if variant in ("relucol", "mixcol"):
        col = sum(column_norms(model, s, n).pow(2) for s in group.consumers).sqrt()
        f = f * col.unsqueeze(1)
    return torch.cat([unit(raw), unit(f)], 1) if variant.startswith("mix") else f


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--points", default="0.1,0.3")
    p.add_argument("--seeds", default="0")
    p.add_argument("--variants", default="raw,relucol,mixcol,incol,mixin")
    p.add_argument("--act-images", type=int, default=256)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--l1", action="store_true", help="also L1 + the same refit")
    args = p.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {VARIANTS}")
    torch.set_num_threads(1)
    from tuneless.layer_refit import refit
    from tuneless.methods.prune import prune

    model, _, ds = load_any(args.checkpoint)
    model.eval()
    test = get_dataset(ds, "test").subset(args.test_images)
    images = get_dataset(ds, "train").subset(1024, seed=1).training_view(None, seed=2)
    x = test.tensors(8)[0]
    few = images[:args.act_images]
    STATE["outputs"] = sampled(model, few, (nn.Conv2d, nn.Linear, nn.BatchNorm2d,
                                            nn.BatchNorm1d), pre=False)
    STATE["inputs"] = sampled(model, few, (nn.Conv2d, nn.Linear), pre=True)
    fold_module.channel_features = features
    stem = Path(args.checkpoint).stem
    for pt in (float(s) for s in args.points.split(",")):
        if args.l1:
            t0 = time.perf_counter()
            small = refit(model, prune(model, sparsity=pt, criterion="l1", example_inputs=x),
                          images, example_inputs=x, inplace=True)
            print(f"{stem} l1-refit {pt}: {accuracy(small, test):.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        for variant in args.variants.split(","):
            STATE["variant"] = variant
            for seed in (int(s) for s in args.seeds.split(",")):
                t0 = time.perf_counter()
                small = fold_module.fold(model, sparsity=pt, repair="refit", example_inputs=x,
                                         seed=seed, data=images)
                print(f"{stem} {variant} {pt} seed {seed}: {accuracy(small, test):.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
