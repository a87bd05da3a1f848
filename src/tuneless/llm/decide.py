"""Decide each layer's reduction: by clustering (folding) or by scores (pruning baselines).

GQA choice (documented in docs/llm.md): a kv head and the query heads that read
it move together. In "kv-groups" mode the unit is a whole kv group (its k and v
heads, its query heads and their o_proj columns); merged groups average their
k/v heads and average their query heads position by position. In
"query-heads" mode every kv head stays and the query heads inside each kv group
are clustered (every group keeps the same number, as HF attention requires).
"""

from __future__ import annotations

import torch

from tuneless.llm.activation_stats import LayerStats
from tuneless.llm.kmeans import assignment_matrices, kmeans
from tuneless.llm.plan import LayerPlan, Shape
from tuneless.llm.reduction import Reduction, expand_groups, selection


def _head_blocks(w: torch.Tensor, n: int, whiten: torch.Tensor | None = None) -> torch.Tensor:
    """(n·hd, hidden) rows → (n, hd·hidden): one flat row block per head (rows mapped
    through the input's whitening factor when given, see activation_stats)."""
    w = w.to(torch.float32)
    return (w if whiten is None else w @ whiten).reshape(n, -1)


def _o_blocks(o: torch.Tensor, n: int, rms: torch.Tensor | None = None) -> torch.Tensor:
    """o_proj (hidden, n·hd) columns → (n, hidden·hd): the columns each head feeds (scaled by
    the RMS of the head output they read when given)."""
    hidden = o.shape[0]
    o = o.to(torch.float32) if rms is None else o.to(torch.float32) * rms
    return o.reshape(hidden, n, -1).permute(1, 0, 2).reshape(n, -1)


def _bias(t, name, n):
    b = t.get(f"{name}.bias")
    return [] if b is None else [b.to(torch.float32).reshape(n, -1)]


def _mlp_blocks(t: dict[str, torch.Tensor], stats: LayerStats | None = None):
    """The column blocks of the MLP features, in order: gate rows, up rows, down columns,
    then the gate/up biases; with activation stats, gate/up rows whitened by the MLP input
    and down columns scaled by each channel's activation RMS (tuneless.llm.activation_stats)."""
    if stats is None:
        yield from (t["gate"].float(), t["up"].float(), t["down"].float().T)
    else:
        yield from (t["gate"].float() @ stats.mlp_in, t["up"].float() @ stats.mlp_in,
                    t["down"].float().T * stats.mlp_rms[:, None])
    for name in ("gate", "up"):
        if f"{name}.bias" in t:
            yield t[f"{name}.bias"].float()[:, None]


def mlp_features(t: dict[str, torch.Tensor], stats: LayerStats | None = None) -> torch.Tensor:
    """[gate row | up row | down column] per intermediate channel (METHODS.md §1.4), raw or
    activation-aware (see _mlp_blocks)."""
    return torch.cat(list(_mlp_blocks(t, stats)), dim=1)


def projected_mlp_features(t: dict[str, torch.Tensor], dim: int, seed: int,
                           stats: LayerStats | None = None) -> torch.Tensor:
    """mlp_features @ P for a seeded Gaussian P (dim columns), computed block by block so the
    full-width feature matrix of a multi-billion-parameter layer is never built."""
    gen = torch.Generator().manual_seed(seed)
    out = None
    for w in _mlp_blocks(t, stats):
        part = w @ (torch.randn(w.shape[1], dim, generator=gen) / dim ** 0.5)
        out = part if out is None else out + part
    return out


def query_head_features(t: dict[str, torch.Tensor], n_q: int,
                        stats: LayerStats | None = None) -> torch.Tensor:
    w, r = (None, None) if stats is None else (stats.attn_in, stats.o_rms)
    return torch.cat([_head_blocks(t["q"], n_q, w), *_bias(t, "q", n_q),
                      _o_blocks(t["o"], n_q, r)], 1)


def kv_group_features(t: dict[str, torch.Tensor], shape: Shape,
                      stats: LayerStats | None = None) -> torch.Tensor:
    n_kv = shape.n_kv
    w = None if stats is None else stats.attn_in
    q = query_head_features(t, shape.n_q, stats).reshape(n_kv, -1)  # g query heads side by side
    return torch.cat(
        [
            _head_blocks(t["k"], n_kv, w),
            *_bias(t, "k", n_kv),
            _head_blocks(t["v"], n_kv, w),
            *_bias(t, "v", n_kv),
            q,
        ],
        1,
    )


def fold_decision(
    t: dict[str, torch.Tensor],
    shape: Shape,
    plan: LayerPlan,
    gqa: str,
    *,
    seed: int = 0,
    n_init: int = 1,
    refine: bool = True,
    dim: int | None = None,
    stats: LayerStats | None = None,
) -> Reduction:
    """k-means on channel/head features; mean for producers, sum for consumers.

    stats: activation statistics of this layer (tuneless.llm.activation_stats) to cluster
    on activation-aware features instead of raw weights."""
    red = Reduction()
    if plan.n_mlp < shape.n_mlp:
        wide = dim is not None and 2 * t["gate"].shape[1] + t["down"].shape[0] > dim
        feats = projected_mlp_features(t, dim, seed, stats) if wide else mlp_features(t, stats)
        labels = kmeans(feats, plan.n_mlp, seed=seed, n_init=n_init, refine=refine)
        red.mlp_m, red.mlp_u = assignment_matrices(labels, plan.n_mlp)
    if plan.n_q == shape.n_q and plan.n_kv == shape.n_kv:
        return red
    if plan.n_kv < shape.n_kv:  # kv groups are the units
        labels = kmeans(kv_group_features(t, shape, stats), plan.n_kv, seed=seed,
                        n_init=max(n_init, 3))
        m, u = assignment_matrices(labels, plan.n_kv)
        red.kv_m = m
        red.q_m, red.q_u = expand_groups(m, u, shape.group)
        return red
    per = plan.n_q // plan.n_kv  # query heads clustered inside each kv group
    feats = query_head_features(t, shape.n_q, stats).reshape(shape.n_kv, shape.group, -1)
    ms, us = [], []
    for j in range(shape.n_kv):
        labels = kmeans(feats[j], per, seed=seed + j, n_init=max(n_init, 3))
        m, u = assignment_matrices(labels, per)
        ms.append(m)
        us.append(u)
    red.q_m, red.q_u = torch.block_diag(*ms), torch.block_diag(*us)
    return red


def score_decision(
    mlp_scores: torch.Tensor | None,
    q_scores: torch.Tensor | None,
    kv_scores: torch.Tensor | None,
    shape: Shape,
    plan: LayerPlan,
) -> Reduction:
    """Structured pruning: keep the highest-scoring MLP channels and heads."""
    red = Reduction()
    if plan.n_mlp < shape.n_mlp:
        red.mlp_m, red.mlp_u = selection(torch.topk(mlp_scores, plan.n_mlp).indices, shape.n_mlp)
    if plan.n_q == shape.n_q and plan.n_kv == shape.n_kv:
        return red
    g = shape.group
    if plan.n_kv < shape.n_kv:
        group_scores = q_scores.reshape(shape.n_kv, g).sum(1)
        if kv_scores is not None:
            group_scores = group_scores + kv_scores
        m, u = selection(torch.topk(group_scores, plan.n_kv).indices, shape.n_kv)
        red.kv_m = m
        red.q_m, red.q_u = expand_groups(m, u, g)
        return red
    per = plan.n_q // plan.n_kv
    keep = torch.cat(
        [torch.topk(q_scores[j * g : (j + 1) * g], per).indices + j * g for j in range(shape.n_kv)]
    )
    red.q_m, red.q_u = selection(keep, shape.n_q)
    return red


def magnitude_scores(t: dict[str, torch.Tensor], shape: Shape):
    """Data-free L2 importance of MLP channels, query heads and kv heads."""
    mlp = mlp_features(t).pow(2).sum(1).sqrt()
    q = query_head_features(t, shape.n_q).pow(2).sum(1).sqrt()
    kv = (
        _head_blocks(t["k"], shape.n_kv).pow(2).sum(1)
        + _head_blocks(t["v"], shape.n_kv).pow(2).sum(1)
    ).sqrt()
    return mlp, q, kv


def wanda_sp_scores(
    t: dict[str, torch.Tensor], shape: Shape, down_in_norm: torch.Tensor, o_in_norm: torch.Tensor
):
    """Wanda-sp: importance of an input channel j of down_proj / o_proj is Σ_i |W_ij|·||X_j||,
    summed over a head's dimensions for heads."""
    mlp = (t["down"].float().abs() * down_in_norm[None, :]).sum(0)
    per_dim = (t["o"].float().abs() * o_in_norm[None, :]).sum(0)
    q = per_dim.reshape(shape.n_q, -1).sum(1)
    return mlp, q, None
