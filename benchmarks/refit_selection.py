"""With the least-squares refit, why does folding trail L1 pruning at low sparsity? Two
experiments against L1 + the same refit, all on the same 1,024 plain training images:

* medoid-refit: keep each cluster's medoid (the member nearest its centroid) instead of the
  centroid, so every kept channel is an original one (the refit then targets its outputs);
* drop-refit: k-means with one extra centroid pinned near the origin (as many zero rows as
  channels added to the features); channels that land there are removed outright instead of
  taking a merged slot — folding's version of pruning a dead channel.

    python benchmarks/refit_selection.py models/resnet20-cifar10.pt --points 0.1,0.3,0.5

Prints one line per (variant, point, seed); fold-refit is the default (centroids), l1-refit
tuneless.prune L1 + tuneless.layer_refit.refit. The two experiments are patched in here,
not options of tuneless.fold (docs/folding.md says what they gave).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.suites

from benchmarks.suites.fold_bench import load_any  # noqa: E402
from tuneless.data import get_dataset  # noqa: E402
from tuneless.evaluate import accuracy  # noqa: E402


def medoid_patch():
    """Make tuneless.fold keep cluster medoids: (M, U) with M selecting one member each."""
    import tuneless.cluster as tc
    import tuneless.reduce as tr
    from tuneless.decisions import merge

    current, plain_cluster = {}, tc.cluster

    def remembering(feats, k, **kw):
        current["feats"] = feats
        return plain_cluster(feats, k, **kw)

    def medoids(labels, k=None):
        m, u = merge(labels, k)
        f = current["feats"].double()
        dist = ((f - (m.double() @ f)[labels]) ** 2).sum(1)
        sel = torch.zeros_like(m)
        for j in range(m.shape[0]):
            members = (labels == j).nonzero().flatten()
            sel[j, members[dist[members].argmin()]] = 1.0
        return sel, u

    tc.cluster, tr.merge = remembering, medoids


def drop_patch():
    """Make tuneless.fold drop the channels k-means assigns to a centroid pinned at 0."""
    import tuneless.cluster as tc
    import tuneless.reduce as tr
    from tuneless.decisions import merge

    plain_cluster = tc.cluster

    def with_origin(feats, k, **kw):
        n = feats.shape[0]
        c = plain_cluster(torch.cat([feats, feats.new_zeros(n, feats.shape[1])]), k + 1, **kw)
        lab = c.labels[:n].clone()
        drop = int(c.labels[n])  # the phantoms' cluster
        lab = torch.where(lab == drop, torch.full_like(lab, k), lab - (lab > drop).long())
        if not bool((lab == k).any()):  # nothing dropped: k-means on the real points, as usual
            return plain_cluster(feats, k, **kw)
        return dataclasses.replace(c, labels=lab)  # label k: dropped

    def merge_or_drop(labels, k=None):
        k = int(labels.max()) + 1 if k is None else k
        keep = labels < k
        if bool(keep.all()):
            return merge(labels, k)
        m, u = merge(torch.where(keep, labels, torch.zeros_like(labels)), k)
        m[:, ~keep] = 0.0  # dropped channels feed no new channel ...
        u[~keep] = 0.0  # ... and their consumers' columns go
        m = m / m.sum(1, keepdim=True)  # the means over the kept members only
        return m, u

    tc.cluster, tr.merge = with_origin, merge_or_drop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--points", default="0.1,0.3,0.5")
    p.add_argument("--seeds", default="0")
    p.add_argument("--variants", default="fold-refit,l1-refit,medoid-refit")
    args = p.parse_args()
    torch.set_num_threads(1)
    from tuneless.layer_refit import refit
    from tuneless.methods.fold import fold
    from tuneless.methods.prune import prune

    model, _, ds = load_any(args.checkpoint)
    test = get_dataset(ds, "test")
    images = get_dataset(ds, "train").subset(1024, seed=1).training_view(None, seed=2)
    x = test.tensors(8)[0]
    # a patch changes tuneless.fold for the rest of the process: run each in its own process
    variants = args.variants.split(",")
    if sum(v in ("medoid-refit", "drop-refit") for v in variants) > 1:
        raise SystemExit("medoid-refit and drop-refit patch tuneless.fold: run them separately")
    for variant in sorted(variants, key=lambda v: v in ("medoid-refit", "drop-refit")):
        if variant == "medoid-refit":
            medoid_patch()
        if variant == "drop-refit":
            drop_patch()
        seeds = [0] if variant == "l1-refit" else [int(s) for s in args.seeds.split(",")]
        for pt in (float(s) for s in args.points.split(",")):
            for seed in seeds:  # L1 is deterministic
                t0 = time.perf_counter()
                if variant == "l1-refit":
                    small = refit(model, prune(model, sparsity=pt, criterion="l1",
                                               example_inputs=x), images, example_inputs=x,
                                  inplace=True)
                else:
                    small = fold(model, sparsity=pt, repair="refit", example_inputs=x,
                                 seed=seed, data=images)
                print(f"{Path(args.checkpoint).stem} {variant} {pt} seed {seed}: "
                      f"{accuracy(small, test):.4f} ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
