"""FLAP (An et al., AAAI 2024) as a baseline in the folding harness: a data-driven,
retraining-free structured pruner.

Three parts, as published:
1. **Fluctuation metric.** Input column j of a consumer W (o_proj, down_proj) scores
   Var(X_j)·||W[:, j]||²: a channel whose input barely varies over the calibration tokens
   can be replaced by its mean. A unit (MLP channel, kv group of heads) scores the sum over
   its columns.
2. **Adaptive structure.** Scores are standardised within each layer and module kind
   ((s − mean)/std), then ranked globally across layers and between attention and MLP;
   the lowest are removed until the parameter budget is met, so the per-layer sizes come
   out of the ranking instead of a schedule.
3. **Bias compensation.** The removed columns' mean contribution W[:, removed]·E[X_removed]
   becomes a bias of the consumer, so the layer's mean output is unchanged.

Folding's least-squares repair can follow (`repair="self" | "refit"`), on equal terms.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneless.errors import TunelessError
from tuneless.graph.groups import CONSUMER, Source
from tuneless.llm.adapters import LayerGroups, adapter_for, layer_graph
from tuneless.llm.conv1d import as_linear
from tuneless.llm.decide import consumer_scores, score_decisions
from tuneless.llm.engine import reduce_llm
from tuneless.llm.fold import CALIB_SKIP
from tuneless.llm.plan import LayerPlan, Shape
from tuneless.modelcheck import check_model
from tuneless.options import check_call

STRUCTURES = ("adaptive", "uniform")
# config flag -> the projections it gives biases to (LLaMA-layout configs)
BIAS_FLAGS = {"mlp_bias": ("gate", "up", "down"), "attention_bias": ("q", "k", "v", "o")}


class ColumnMoments:
    """Forward pre-hook: per input column, the count, Σx and Σx² over every token (float64)."""

    def __init__(self) -> None:
        self.count, self.first, self.second = 0, None, None

    def __call__(self, _module, args) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        s1, s2 = x.sum(0), (x * x).sum(0)
        self.first = s1 if self.first is None else self.first + s1
        self.second = s2 if self.second is None else self.second + s2
        self.count += x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.first / max(self.count, 1)

    def variance(self) -> torch.Tensor:
        """Sample variance (n − 1 in the denominator, as FLAP)."""
        n = max(self.count, 2)
        return ((self.second - self.first ** 2 / n) / (n - 1)).clamp(min=0)


def consumer_moments(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, ColumnMoments]:
    """Per o_proj / down_proj (by module name): mean and variance of each input column."""
    from tuneless.llm.prune import consumer_meters

    return consumer_meters(model, batches, ColumnMoments)


def fluctuation_scores(source: Source, lg: LayerGroups,
                       moments: dict[str, ColumnMoments]) -> dict[int, torch.Tensor]:
    """Per group: each unit's Σ over its consumer columns j of Var(X_j)·||W[:, j]||²."""
    variances = {name: m.variance() for name, m in moments.items()}
    return consumer_scores(source, lg, variances,
                           lambda rows, var: (rows.pow(2).sum(-1) * var).sum(1), torch.float64)


def _standardised(scores: torch.Tensor) -> torch.Tensor:
    if len(scores) < 2:
        return torch.zeros_like(scores)
    std = scores.std()
    return (scores - scores.mean()) / (std if float(std) > 0 else 1.0)


def unit_costs(shape: Shape) -> tuple[int, int]:
    """Block parameters one MLP channel and one kv group of heads carry (rows, columns,
    biases)."""
    mlp = shape.mlp_mats * shape.hidden + (shape.mlp_mats - 1) * shape.mlp_bias
    head = shape.head_dim * (shape.hidden * (2 * shape.group + 2)
                             + (shape.group + 2) * shape.attn_bias)
    return mlp, head


def adaptive_plans(shapes: list[Shape], scores: list[tuple[torch.Tensor, torch.Tensor]],
                   sparsity: float, heads: bool = True) -> list[LayerPlan]:
    """FLAP's global ranking of standardised scores: remove the lowest-scoring units (MLP
    channels, kv groups of heads), across layers and module kinds, until `sparsity` of the
    block parameters is gone; every layer keeps at least one unit of each kind.

    scores: per layer, (MLP channel scores, kv-group scores). heads=False: MLP channels
    only (families whose head counts cannot differ per layer or cannot fold at all)."""
    total = sum(s.params() for s in shapes)
    entries = []  # (z, layer, kind, unit cost)
    for i, (shape, pair) in enumerate(zip(shapes, scores)):
        for kind, (unit_scores, cost) in enumerate(zip(pair, unit_costs(shape))):
            if kind == 1 and not heads:
                continue
            entries += [(float(v), i, kind, cost) for v in _standardised(unit_scores)]
    entries.sort(key=lambda e: e[0])
    left = [[s.n_mlp, s.n_kv] for s in shapes]
    removed, need = 0, sparsity * total
    for _z, i, kind, cost in entries:
        if removed >= need:
            break
        if left[i][kind] > 1:
            left[i][kind] -= 1
            removed += cost
    if removed < need:
        raise TunelessError(f"FLAP cannot remove {sparsity:.0%} of the block parameters "
                            "while keeping one unit of each kind per layer")
    return [LayerPlan(n_kv * s.group, n_kv, n_mlp) for s, (n_mlp, n_kv) in zip(shapes, left)]


def bias_carriers(adapter, model: nn.Module) -> dict[str, str | None]:
    """Per bias flag (module kind), None if a saved model can carry FLAP's compensation for
    its consumers — the config has the flag (plain transformers then builds the biases), or
    every consumer of that kind already has a bias (GPT-2, OPT, GPT-NeoX, Phi) — else why not."""
    out: dict[str, str | None] = {}
    for flag, shorts in BIAS_FLAGS.items():
        mods = [adapter.projections(layer).get(shorts[-1]) for layer in adapter.layers(model)]
        has = all(m is not None and m.bias is not None for m in mods)
        out[flag] = (None if has or hasattr(model.config, flag) else
                     f"{type(model).__name__} has no config.{flag} and its {shorts[-1]} "
                     "projections have no biases")
    return out


@torch.no_grad()
def compensate_bias(model: nn.Module, small: nn.Module,
                    kept: list[tuple[LayerGroups, dict[int, torch.Tensor]]],
                    moments: dict[str, ColumnMoments], kinds=tuple(BIAS_FLAGS)) -> None:
    """Add W[:, removed]·E[X_removed] of every shrunk consumer of the bias `kinds` (flags of
    BIAS_FLAGS) to its bias (created if absent; its siblings get zero biases so that the
    family's config flag describes the model).

    kept: per shrunk layer, its groups and the kept unit indices by group id."""
    adapter = adapter_for(small)
    n = len(adapter.layers(small))
    allowed = {adapter.module_name(i, BIAS_FLAGS[k][-1]) for k in kinds for i in range(n)}
    for lg, by_group in kept:
        for g in lg.groups:
            if g.id not in by_group:
                continue
            gone = torch.ones(g.n, dtype=torch.bool)
            gone[by_group[g.id]] = False
            for s in g.slots:
                if s.kind != CONSUMER or s.module not in allowed:
                    continue
                units = torch.nonzero(gone).squeeze(1) + s.offset
                cols = (units.unsqueeze(1) * s.block + torch.arange(s.block)).reshape(-1)
                w = model.get_submodule(s.module).weight.double()
                shift = w[:, cols] @ moments[s.module].mean()[cols]
                target = small.get_submodule(s.module)
                if target.bias is None:
                    target.bias = nn.Parameter(torch.zeros(
                        target.out_features, dtype=target.weight.dtype,
                        device=target.weight.device))
                target.bias.add_(shift.to(target.bias.dtype))
    _bias_flags(adapter, small)


def _bias_flags(adapter, model: nn.Module) -> None:
    """Give every projection of a bias-carrying kind a (zero) bias and set the config flag,
    so plain transformers rebuilds the same modules (mlp_bias / attention_bias), for the
    flags the family's config has (bias_carriers)."""
    layers = adapter.layers(model)
    for flag, shorts in BIAS_FLAGS.items():
        if not hasattr(model.config, flag) or not any(
                adapter.projections(layer)[shorts[-1]].bias is not None for layer in layers):
            continue
        for layer in layers:
            p = adapter.projections(layer)
            for short in shorts:
                mod = p.get(short)
                if mod is not None and mod.bias is None:
                    mod.bias = nn.Parameter(torch.zeros(mod.out_features, dtype=mod.weight.dtype,
                                                        device=mod.weight.device))
        setattr(model.config, flag, True)


def flap_llm(model: nn.Module, sparsity: float | None = None, *, tokenizer=None,
             batches: list[torch.Tensor] | None = None, n_samples: int = 16,
             seq_len: int = 512, structure: str = "adaptive", schedule="uniform",
             gqa: str = "kv-groups", bias: bool | None = None, seed: int = 0,
             repair: str | None = None, calib_samples: int = 16, calib_len: int = 128,
             refit_lambda: float = 3.0, calib_skip: int = CALIB_SKIP) -> nn.Module:
    """FLAP: fluctuation scores, global adaptive structure, bias compensation (module doc).

    structure="uniform" uses `schedule` (folding's per-layer sizes, for equal terms; a dict
    {layer: (head_ratio, mlp_ratio)} without sparsity) and FLAP's metric within each layer.
    `repair`: folding's least-squares repair afterwards ("refit" on the same calibration
    batches, "self" on the model's own samples). bias: None compensates the consumers
    whose saved model can carry a bias (bias_carriers) and says which cannot; True
    refuses a family where one kind cannot; False skips the compensation.
    """
    from tuneless.llm.calibration import token_batches
    from tuneless.llm.engine import plan_for
    from tuneless.llm.fold import repair_reduced

    model = as_linear(check_model(model, "flap"))  # GPT-2: Conv1D as Linear
    check_call(flap_llm, {"sparsity": sparsity, "seed": seed, "n_samples": n_samples,
                          "seq_len": seq_len}, "flap")
    if structure not in STRUCTURES:
        raise TunelessError(f"structure={structure!r}; choose one of {', '.join(STRUCTURES)}")
    if structure == "adaptive" and (sparsity is None or not 0.0 < sparsity < 0.9):
        raise TunelessError(f"FLAP's adaptive structure needs sparsity in (0, 0.9), got "
                            f"{sparsity}")
    batches = token_batches(model, batches, tokenizer, n_samples, seq_len, seed, "flap")
    adapter = adapter_for(model)
    kinds = _bias_kinds(adapter, model, bias)  # before any work
    if structure == "adaptive" and gqa != "kv-groups":
        raise TunelessError("FLAP's adaptive structure ranks whole kv groups: use "
                            "gqa='kv-groups' or structure='uniform'")
    moments = consumer_moments(model, batches)
    shapes = adapter.shapes(model)
    _, per_layer = layer_graph(adapter, shapes, gqa)
    # per layer, the scores of its groups in LayerGroups order ([mlp, *heads]), once
    layer_scores = [list(fluctuation_scores(model, per_layer[i], moments).values())
                    for i in range(len(shapes))]
    if structure == "adaptive":
        pairs = [(sc[0], sc[1]) for sc in layer_scores]
        plans = adaptive_plans(shapes, pairs, sparsity)
        try:
            adapter.check_plans(plans, shapes)
        except TunelessError:  # head counts that must stay (uniform): rank MLP channels only
            plans = adaptive_plans(shapes, pairs, sparsity, heads=False)
            adapter.check_plans(plans, shapes)
    else:
        plans = plan_for(model, sparsity=sparsity, schedule=schedule, gqa=gqa)
    kept: list[tuple[LayerGroups, dict[int, torch.Tensor]]] = []

    def decide(i, groups, shape, plan):
        scores = {g.id: v.float() for g, v in zip(groups.groups, layer_scores[i])}
        out = score_decisions(adapter, groups, shape, plan, scores)
        kept.append((groups, {gid: m_u[0].argmax(1) for gid, m_u in out.items()}))
        return out

    small = reduce_llm(model, plans, decide, gqa=gqa, desc="flap")
    if kinds:
        compensate_bias(model, small, kept, moments, kinds)
    data = torch.cat([b[:, :calib_len] for b in batches]) if repair == "refit" else None
    return repair_reduced(model, small, repair, tokenizer=tokenizer, data=data,
                          calib_samples=calib_samples, calib_len=calib_len, seed=seed,
                          refit_lambda=refit_lambda, calib_skip=calib_skip)


def _bias_kinds(adapter, model: nn.Module, bias: bool | None) -> tuple[str, ...]:
    """The bias flags (module kinds) FLAP compensates: all with bias=True (refusing a
    family that cannot carry one), none with False, those that can be carried with None."""
    import warnings

    if bias is False:
        return ()
    why = bias_carriers(adapter, model)
    missing = [reason for reason in why.values() if reason]
    if missing and bias:
        raise TunelessError(f"{missing[0]}: FLAP's bias compensation cannot be saved for it; "
                            "use bias=False (or the default, which compensates what it can)")
    if missing:
        warnings.warn(f"FLAP's bias compensation skipped where it cannot be saved: "
                      f"{'; '.join(missing)}", stacklevel=3)
    return tuple(flag for flag, reason in why.items() if not reason)
