"""Run per-layer decisions over a causal LM through the one engine (tuneless.reduce)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tuneless.decisions import Decision
from tuneless.errors import TunelessError
from tuneless.llm.adapters import LayerGroups, adapter_for, layer_graph
from tuneless.llm.hf import detached_quantizer, plain_copy
from tuneless.llm.plan import LayerPlan, Shape, make_plan
from tuneless.progress import progress
from tuneless.reduce import reduce

Decide = Callable[[int, LayerGroups, Shape, LayerPlan], dict[int, Decision]]


def plan_for(
    model: nn.Module,
    *,
    sparsity=None,
    schedule="uniform",
    head_ratio=None,
    mlp_ratio=None,
    gqa="kv-groups",
) -> list[LayerPlan]:
    adapter = adapter_for(model)
    shapes = adapter.shapes(model)
    plans = make_plan(shapes, sparsity=sparsity, schedule=schedule,
                      head_ratio=adapter.head_ratio_for(schedule, head_ratio),
                      mlp_ratio=mlp_ratio, gqa=gqa)
    adapter.check_plans(plans, shapes)
    return plans


def reduce_llm(
    model: nn.Module,
    plans: list[LayerPlan],
    decide: Decide,
    *,
    gqa: str = "kv-groups",
    desc: str = "reduce",
    show_progress: bool = False,
) -> nn.Module:
    """Decide (M, U) for every group of every layer whose plan shrinks it, then rewrite the
    whole model once with tuneless.reduce and fix the Hugging Face attributes."""
    adapter = adapter_for(model)
    shapes = adapter.shapes(model)
    if len(plans) != len(shapes):
        raise TunelessError(f"plan has {len(plans)} layers, model has {len(shapes)}")
    changed = [i for i, (s, p) in enumerate(zip(shapes, plans))
               if p != LayerPlan(s.n_q, s.n_kv, s.n_mlp)]
    graph, per_layer = layer_graph(adapter, shapes, gqa, changed)
    decisions: dict[int, Decision] = {}
    with torch.no_grad():
        for i in progress(changed, total=len(changed), desc=desc, unit="layer",
                          disable=not show_progress):
            decisions.update(decide(i, per_layer[i], shapes[i], plans[i]))
    if decisions:
        with detached_quantizer(model):
            new = reduce(model, graph, decisions)
        plain_copy(new, inplace=True)
        adapter.finalize(new)
    else:
        new = plain_copy(model)
    before, after = block_params(model), block_params(new)
    new.tuneless_report = {
        "method": desc, "achieved_sparsity": 1 - after / before, "params_before": before,
        "params_after": after, "physically_smaller": True, "block_parameters_only": True,
        "layer_sizes": [[s.n_q, s.n_kv, s.n_mlp] for s in adapter.shapes(new)]}
    return new.eval()


def block_params(model: nn.Module) -> int:
    """Parameters inside the decoder layers (the budget's denominator)."""
    adapter = adapter_for(model)
    return sum(p.numel() for p in adapter.layers(model).parameters())
