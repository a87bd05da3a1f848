"""With the least-squares refit, which channels should be merged and which kept? Same
per-group widths (the default stream share), same 1,024 plain training images, seed 0:
fold every group, prune every group by L1 norm, or mix the two — streams pruned and inner
groups folded ("streams-l1"), or streams folded and inner groups pruned ("streams-fold") —
then the same refit (tuneless.layer_refit). Prints one JSON line per sparsity (accuracy % on
the first `--test-images` test images).

    python benchmarks/refit_hybrid.py CHECKPOINT --points 0.5,0.8
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    from tuneless.budget import solve
    from tuneless.cluster import cluster
    from tuneless.data.loader import get_dataset
    from tuneless.decisions import merge, selection
    from tuneless.evaluate import accuracy
    from tuneless.graph import find_groups
    from tuneless.layer_refit import refit_layers
    from tuneless.methods.fold import FoldOptions, channel_features
    from tuneless.methods.prune import channel_importance
    from tuneless.modelio import load_model
    from tuneless.progress import set_progress
    from tuneless.reduce import reduce

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--points", default="0.5,0.8")
    p.add_argument("--test-images", type=int, default=2000)
    args = p.parse_args()
    set_progress(False)
    torch.set_num_threads(1)
    model = load_model(args.checkpoint).eval()
    images = get_dataset("cifar10", "train").subset(1024, seed=1).training_view(None, seed=2)
    test = get_dataset("cifar10", "test").subset(args.test_images)
    x = torch.randn(2, 3, 32, 32)
    graph = find_groups(model, x)
    opts = FoldOptions()
    for pt in (float(v) for v in args.points.split(",")):
        kept = solve(model, graph, pt).kept
        folded, pruned = {}, {}
        for g in graph.reducible:
            k = kept[g.id]
            if k >= g.n:
                continue
            feats = channel_features(model, g, opts.features, opts.norm_stats)
            folded[g.id] = merge(cluster(feats, k, seed=0).labels, k)
            keep = torch.topk(channel_importance(model, g, "l1", torch.Generator()), k).indices
            pruned[g.id] = selection(keep, g.n)
        row = {"point": pt}
        for name, fold_it in (("fold", lambda g: True), ("l1", lambda g: False),
                              ("streams-l1", lambda g: not g.stream),
                              ("streams-fold", lambda g: g.stream)):
            decisions = {g.id: (folded if fold_it(g) else pruned)[g.id]
                         for g in graph.reducible if g.id in folded}
            small = reduce(copy.deepcopy(model), graph, decisions)
            maps = {gid: d[0] for gid, d in decisions.items()}
            small = refit_layers(model, small, graph, maps, images, inplace=True)
            row[name] = round(100 * accuracy(small, test), 2)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
