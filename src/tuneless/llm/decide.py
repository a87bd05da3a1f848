"""Decide each decoder layer's (M, U) per channel group: by clustering (folding) or by
scores (pruning baselines). The groups come from the family adapter; features, clustering
and decisions are the engine's own (ChannelGroup.features, tuneless.cluster,
tuneless.decisions).

GQA choice (documented in docs/llm.md): in "kv-groups" mode the unit is a whole kv group
(its k and v heads, its query heads and their o_proj columns); merged groups average their
k/v heads and average their query heads position by position. In "query-heads" mode every
kv head stays and the query heads inside each kv group are clustered (every group keeps
the same number, as HF attention requires).
"""

from __future__ import annotations

import torch

from tuneless.cluster import cluster
from tuneless.decisions import Decision, merge, selection
from tuneless.errors import TunelessError
from tuneless.graph.groups import CONSUMER, Source
from tuneless.llm.activation_stats import LayerStats
from tuneless.llm.adapters import DecoderAdapter, LayerGroups, whitening
from tuneless.llm.plan import LayerPlan, Shape

KMEANS_DIM = 128  # the width of the random projection where MLP features are projected
# kmeans_dim="auto" (the default in memory and streamed): a layer's MLP channels cluster on
# their full features while channels² × feature width stays within this (SmolLM2 4.1e9,
# Gemma 3 270M 8.1e9, Qwen2.5-0.5B 6.4e10: 0.4 / 0.6 / 3.7 CPU-s for one layer's k-means
# at 75% kept, one thread, random features of those sizes), on a KMEANS_DIM-wide
# projection beyond (Llama 3.2 1B, 4.1e11: 21 s a layer in full; 3B models more)
AUTO_PROJECT_WORK = 1e11


def check_kmeans_dim(dim) -> None:
    """kmeans_dim is "auto", None (full features) or a projection width ≥ 1."""
    if dim == "auto" or dim is None or (isinstance(dim, int) and not isinstance(dim, bool)
                                        and dim >= 1):
        return
    raise TunelessError(f"kmeans_dim must be 'auto', None or a positive integer, got {dim!r}")


def projection_width(dim, channels: int, width: int) -> int | None:
    """The width MLP features of `channels` × `width` are projected to before k-means, or
    None for the full features: `dim` when they are wider than it, and for "auto" KMEANS_DIM
    only when clustering them in full would cost more than AUTO_PROJECT_WORK."""
    if dim == "auto":
        dim = KMEANS_DIM if channels * channels * width > AUTO_PROJECT_WORK else None
    return dim if dim is not None and width > dim else None


def kmeans_labels(x: torch.Tensor, k: int, *, seed: int = 0, n_init: int = 1,
                  refine: bool = True, method: str = "kmeans") -> torch.Tensor:
    """Labels 0..k-1, every cluster used (tuneless.cluster guarantees it), of k-means (or
    another tuneless.cluster method) on the rows of x."""
    return cluster(x.float(), k, method, seed=seed, n_init=n_init, refine=refine,
                   max_iter=100).labels


def fold_decisions(adapter: DecoderAdapter, source: Source, lg: LayerGroups, shape: Shape,
                   plan: LayerPlan, *, seed: int = 0, n_init: int = 1, refine: bool = True,
                   dim: int | None = None, stats: LayerStats | None = None,
                   method: str = "kmeans") -> dict[int, Decision]:
    """k-means on each shrinking group's features; mean for producers, sum for consumers.

    dim: cluster a seeded random projection of the MLP features (`projection_width`: "auto"
    only where full features would be costly, an int where they are wider than it);
    stats: cluster activation-aware features."""
    transform = None if stats is None else whitening(stats, lg.roles)
    out = {}
    for gid, k in adapter.kept(lg, shape, plan).items():
        g = next(g for g in lg.groups if g.id == gid)
        if g is lg.mlp:
            width = projection_width(dim, shape.n_mlp, shape.mlp_mats * shape.hidden)
            feats = g.features(source, transform=transform,
                               project=None if width is None else (width, seed))
            labels = kmeans_labels(feats, k, seed=seed, n_init=n_init, refine=refine,
                                   method=method)
        else:
            j = lg.heads.index(g) if lg.gqa == "query-heads" else 0
            labels = kmeans_labels(g.features(source, transform=transform), k, seed=seed + j,
                                   n_init=max(n_init, 3), method=method)
        out[gid] = merge(labels, k)
    return out


def score_decisions(adapter: DecoderAdapter, lg: LayerGroups, shape: Shape, plan: LayerPlan,
                    scores: dict[int, torch.Tensor]) -> dict[int, Decision]:
    """Structured pruning: every shrinking group keeps its highest-scoring units."""
    return {gid: selection(torch.topk(scores[gid], k).indices, len(scores[gid]))
            for gid, k in adapter.kept(lg, shape, plan).items()}


def magnitude_scores(source: Source, lg: LayerGroups) -> dict[int, torch.Tensor]:
    """Data-free importance: the L2 norm of every weight a unit owns (rows and columns)."""
    return {g.id: g.features(source).pow(2).sum(1).sqrt() for g in lg.groups}


def consumer_scores(source: Source, lg: LayerGroups, column_stats: dict[str, torch.Tensor],
                    score, dtype: torch.dtype = torch.float32) -> dict[int, torch.Tensor]:
    """Per group: each unit's score summed over its consumer (o_proj, down_proj) columns.

    column_stats: module name -> one statistic per input column of that consumer;
    score(columns (n, block, out), stats (n, block)) -> (n,) for the group's n units."""
    out = {}
    for g in lg.groups:
        total = torch.zeros(g.n, dtype=dtype)
        for s in g.slots:
            if s.kind != CONSUMER:
                continue
            rows = s.channel_rows(source, g.n).to(dtype).reshape(g.n, s.block, -1)
            stat = column_stats[s.module][s.offset * s.block:(s.offset + g.n) * s.block]
            total += score(rows, stat.to(dtype).reshape(g.n, s.block))
        out[g.id] = total
    return out


def wanda_sp_scores(source: Source, lg: LayerGroups,
                    input_norms: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Wanda-sp: an input column j of the consumer (down_proj, o_proj) scores
    Σ_i |W_ij|·||X_j||₂; a unit scores the sum over its columns.

    input_norms: module name -> ||X_j||₂ per input column of that consumer."""
    return consumer_scores(source, lg, input_norms,
                           lambda rows, norm: (rows.abs() * norm.unsqueeze(2)).sum((1, 2)))
