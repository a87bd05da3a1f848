"""Grouped-conv blocks: the batched block k-means (`tuneless.cluster.kmeans_blocks`, what
`cluster(..., blocks=G)` runs for blocks of 9-64 channels) against one k-means call per
block, on the blocked channel groups of random-weight torchvision models (features as the
default fold builds them). Prints the summed objective and time of both, per keep ratio.

    python benchmarks/block_kmeans.py [--models regnet_x_400mf,resnext50_32x4d]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    import torchvision

    from tuneless.cluster import cluster
    from tuneless.graph import find_groups
    from tuneless.methods.fold import FoldOptions, channel_features

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="regnet_x_400mf,resnext50_32x4d")
    p.add_argument("--groups", type=int, default=8, help="blocked groups per model")
    # per block: the clusterer the fold used on each block before (opts.cluster)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    opts = FoldOptions()
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(num_classes=10).eval()
        graph = find_groups(model, torch.randn(1, 3, 64, 64))
        groups = [g for g in graph.reducible if 8 < g.n // g.blocks <= 64][:args.groups]
        feats = {g.id: channel_features(model, g, opts.features, opts.norm_stats)
                 for g in groups}
        for keep in (0.9, 0.7, 0.5):
            batched = apart = t_batched = t_apart = 0.0
            for g in groups:
                nb, kb = g.n // g.blocks, max(1, round(g.n * keep / g.blocks))
                f = feats[g.id]
                t = time.perf_counter()
                batched += cluster(f, kb * g.blocks, blocks=g.blocks).inertia
                t_batched += time.perf_counter() - t
                t = time.perf_counter()
                apart += sum(cluster(f[b * nb:(b + 1) * nb], kb, method=opts.cluster).inertia
                             for b in range(g.blocks))
                t_apart += time.perf_counter() - t
            print(f"{name} ({len(groups)} groups) keep {keep:.0%}: one k-means per block "
                  f"{apart:.4f} in {t_apart:.2f} s, batched {batched:.4f} in {t_batched:.2f} s "
                  f"({batched / apart - 1:+.4%})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
