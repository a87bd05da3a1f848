"""Run a per-layer decision over a causal LM and return the new, smaller copy."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tuneless.errors import TunelessError
from tuneless.llm.adapters import adapter_for
from tuneless.llm.plan import LayerPlan, Shape, make_plan
from tuneless.llm.reduction import Reduction, apply_reduction
from tuneless.llm.surgery import layer_shapes, layer_tensors, plain_copy, set_layer, update_config
from tuneless.progress import progress

Decide = Callable[[int, dict[str, torch.Tensor], Shape, LayerPlan], Reduction]


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
    return make_plan(
        layer_shapes(adapter, model),
        sparsity=sparsity,
        schedule=schedule,
        head_ratio=head_ratio,
        mlp_ratio=mlp_ratio,
        gqa=gqa,
    )


def reduce_llm(
    model: nn.Module,
    plans: list[LayerPlan],
    decide: Decide,
    *,
    desc: str = "reduce",
    show_progress: bool = False,
) -> nn.Module:
    """Copy the model, then for every layer decide (M, U) and rewrite its projections."""
    adapter = adapter_for(model)
    shapes = layer_shapes(adapter, model)
    if len(plans) != len(shapes):
        raise TunelessError(f"plan has {len(plans)} layers, model has {len(shapes)}")
    new = plain_copy(model)
    hd = adapter.head_dim(model.config)
    layers = adapter.layers(new)
    with torch.no_grad():
        for i in progress(
            range(len(shapes)),
            total=len(shapes),
            desc=desc,
            unit="layer",
            disable=not show_progress,
        ):
            if plans[i] == LayerPlan(shapes[i].n_q, shapes[i].n_kv, shapes[i].n_mlp):
                continue
            t = layer_tensors(adapter, layers[i])
            red = decide(i, t, shapes[i], plans[i])
            set_layer(adapter, layers[i], apply_reduction(t, red, hd), hd)
    final = layer_shapes(adapter, new)
    update_config(new, adapter, [LayerPlan(s.n_q, s.n_kv, s.n_mlp) for s in final])
    new.eval()
    return new


def block_params(model: nn.Module) -> int:
    """Parameters inside the decoder layers (the budget's denominator)."""
    adapter = adapter_for(model)
    return sum(p.numel() for p in adapter.layers(model).parameters())
