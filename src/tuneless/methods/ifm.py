"""IFM (Chen, Zhou, Yan 2023, "Iterative Feature Merging"): the greedy merging baseline.

Repeatedly merge the two most similar channels of a group (smallest squared
distance between their weights: producer rows and consumer columns), producers by
the size-weighted average and consumers by the sum, recomputing distances after
every merge. Unlike k-means folding, an early pairing is never revisited. BN
parameters are merged along but not used for the distance (as in the authors' code,
which compares only weights of two or more dimensions); no repair.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn

from tuneless.budget import STREAM_SHARE
from tuneless.errors import TunelessError, UnsupportedModelError
from tuneless.modelcheck import check_model
from tuneless.options import check_call


def ifm(model: nn.Module, *, sparsity: float | None = None, channel_ratio: float | None = None,
        example_inputs=None, min_channels: int = 1,
        stream_share: float = STREAM_SHARE) -> nn.Module:
    """Merge channels greedily until `sparsity` of the parameters (or `channel_ratio` of
    every group's channels) is removed; returns a new model. stream_share: as for
    tuneless.fold (the same per-group widths)."""
    from tuneless.budget import budget_for_ratio, solve
    from tuneless.cluster import cluster
    from tuneless.decisions import Merge
    from tuneless.graph import find_groups
    from tuneless.materialize import materialize_weights, materialized_report
    from tuneless.methods.fold import _example
    from tuneless.reduce import reduce

    check_model(model, "ifm")
    check_call(ifm, {"min_channels": min_channels, "stream_share": stream_share}, "ifm")
    if (sparsity is None) == (channel_ratio is None):
        raise TunelessError("give exactly one of sparsity or channel_ratio")
    t0 = time.perf_counter()
    x = _example(model, example_inputs)
    model = materialize_weights(model, x)  # weight-standardised convs as plain ones
    graph = find_groups(model, x)
    if not graph.reducible:
        raise UnsupportedModelError(f"nothing to merge in {type(model).__name__}: every channel "
                                    "group is fixed")
    b = (solve(model, graph, sparsity, min_channels, stream_share=stream_share)
         if sparsity is not None
         else budget_for_ratio(model, graph, channel_ratio, min_channels))
    decisions = {}
    for g in graph.reducible:
        k = b.kept[g.id]
        if k >= g.n:
            continue
        feats, summed = weight_features(model, g)
        c = cluster(feats, k, method="greedy", summed=summed, blocks=g.blocks)
        decisions[g.id] = Merge(c.labels, k)
    new = reduce(model, graph, decisions) if decisions else copy.deepcopy(model)
    new.eval()
    new.tuneless_report = {
        "method": "ifm", "requested_sparsity": sparsity, "channel_ratio": b.channel_ratio,
        "achieved_sparsity": b.sparsity, "params_before": b.params_before,
        "params_after": b.params_after, "physically_smaller": True,
        "kept": {str(k): v for k, v in b.kept.items()}, "total_seconds": time.perf_counter() - t0,
        **materialized_report(model),
    }
    return new


def weight_features(model: nn.Module, group) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw rows of every ≥2-D weight on the group, and a mask of the consumer columns."""
    blocks, masks = [], []
    for s in group.slots:
        if s.kind == "norm" or s.tensor(model).dim() < 2:
            continue
        rows = s.channel_rows(model, group.n).float()
        blocks.append(rows)
        masks.append(torch.full((rows.shape[1],), s.kind == "consumer"))
    if not blocks:
        return torch.zeros(group.n, 1), torch.zeros(1, dtype=torch.bool)
    return torch.cat(blocks, 1), torch.cat(masks)
