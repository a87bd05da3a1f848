"""Structured pruning baselines for LLMs in the same harness as folding.

- magnitude_prune_llm: data-free; keeps the MLP channels and heads with the largest
  L2 norm of all their weights (the "magnitude" baseline of the folding paper).
- wanda_sp_llm: structured Wanda (An et al., FLAP); importance of an input channel j
  of down_proj / o_proj is Σ_i |W_ij|·||X_j||₂ with X from calibration text;
  a head's importance is the sum over its dimensions.
Both use the same per-layer plan (sizes) as folding at the same budget.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneless.llm.adapters import adapter_for
from tuneless.llm.decide import magnitude_scores, score_decision, wanda_sp_scores
from tuneless.llm.engine import plan_for, reduce_llm
from tuneless.modelcheck import check_model
from tuneless.options import check_call


def magnitude_prune_llm(model: nn.Module, sparsity: float | None = None, *, schedule="uniform",
                        head_ratio: float | None = None, mlp_ratio: float | None = None,
                        gqa: str = "kv-groups") -> nn.Module:
    """Data-free structured magnitude pruning of MLP channels and heads."""
    check_model(model, "magnitude")
    check_call(magnitude_prune_llm, {"sparsity": sparsity, "head_ratio": head_ratio,
                                     "mlp_ratio": mlp_ratio}, "magnitude")
    plans = plan_for(model, sparsity=sparsity, schedule=schedule, head_ratio=head_ratio,
                     mlp_ratio=mlp_ratio, gqa=gqa)

    def decide(i, t, shape, plan):
        return score_decision(*magnitude_scores(t, shape), shape, plan)

    return reduce_llm(model, plans, decide, desc="magnitude")


@torch.inference_mode()
def input_norms(model: nn.Module, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    """Per layer: (||X||₂ per input channel of down_proj, same for o_proj) over all tokens."""
    adapter = adapter_for(model)
    sums: list[list[torch.Tensor | None]] = []
    hooks = []
    for layer in adapter.layers(model):
        slot: list[torch.Tensor | None] = [None, None]
        sums.append(slot)
        p = adapter.projections(layer)
        for j, lin in enumerate((p["down"], p["o"])):
            def hook(_mod, args, slot=slot, j=j):
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                sq = (x * x).sum(0)
                slot[j] = sq if slot[j] is None else slot[j] + sq
            hooks.append(lin.register_forward_pre_hook(hook))
    try:
        model.eval()
        for x in batches:
            model(input_ids=x, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return [(a.sqrt(), b.sqrt()) for a, b in sums]


def wanda_sp_llm(model: nn.Module, sparsity: float | None = None, *, tokenizer=None,
                 batches: list[torch.Tensor] | None = None, n_samples: int = 16,
                 seq_len: int = 512, schedule="uniform", head_ratio: float | None = None,
                 mlp_ratio: float | None = None, gqa: str = "kv-groups",
                 seed: int = 0) -> nn.Module:
    """Wanda-sp at the same per-layer sizes as folding; needs calibration text.

    Give `batches` (token-id tensors) or a `tokenizer` to draw n_samples windows
    from the calibration text (tuneless.llm.calibration).
    """
    from tuneless.errors import TunelessError
    from tuneless.llm.calibration import calibration_batches

    check_model(model, "wanda-sp")
    check_call(wanda_sp_llm, {"sparsity": sparsity, "head_ratio": head_ratio,
                              "mlp_ratio": mlp_ratio, "seed": seed, "n_samples": n_samples,
                              "seq_len": seq_len}, "wanda-sp")

    if batches is None:
        if tokenizer is None:
            raise TunelessError("wanda-sp needs calibration data: pass tokenizer= or batches=")
        batches = calibration_batches(tokenizer, n_samples, seq_len, seed)
    plans = plan_for(model, sparsity=sparsity, schedule=schedule, head_ratio=head_ratio,
                     mlp_ratio=mlp_ratio, gqa=gqa)
    norms = input_norms(model, batches)

    def decide(i, t, shape, plan):
        return score_decision(*wanda_sp_scores(t, shape, *norms[i]), shape, plan)

    return reduce_llm(model, plans, decide, desc="wanda-sp")
