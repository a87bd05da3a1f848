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

from tuneless.hooks import Moments
from tuneless.llm.adapters import adapter_for
from tuneless.llm.conv1d import as_linear
from tuneless.llm.decide import magnitude_scores, score_decisions, wanda_sp_scores
from tuneless.llm.engine import plan_for, reduce_llm
from tuneless.llm.fold import CALIB_SKIP, repair_reduced
from tuneless.modelcheck import check_model
from tuneless.modes import evaluating
from tuneless.options import check_call


def magnitude_prune_llm(model: nn.Module, sparsity: float | None = None, *, schedule="uniform",
                        head_ratio: float | None = None, mlp_ratio: float | None = None,
                        gqa: str = "kv-groups", repair: str | None = None, tokenizer=None,
                        data=None, calib_samples: int = 16, calib_len: int = 128,
                        seed: int = 0, refit_lambda: float = 3.0,
                        calib_skip: int = CALIB_SKIP) -> nn.Module:
    """Data-free structured magnitude pruning of MLP channels and heads; `repair` ("self",
    "refit") applies folding's least-squares repair to the pruned model, on equal terms."""
    model = as_linear(check_model(model, "magnitude"))  # GPT-2: Conv1D as Linear
    check_call(magnitude_prune_llm, {"sparsity": sparsity, "head_ratio": head_ratio,
                                     "mlp_ratio": mlp_ratio}, "magnitude")
    plans = plan_for(model, sparsity=sparsity, schedule=schedule, head_ratio=head_ratio,
                     mlp_ratio=mlp_ratio, gqa=gqa)

    adapter = adapter_for(model)

    def decide(i, groups, shape, plan):
        return score_decisions(adapter, groups, shape, plan, magnitude_scores(model, groups))

    small = reduce_llm(model, plans, decide, gqa=gqa, desc="magnitude")
    return repair_reduced(model, small, repair, tokenizer=tokenizer, data=data,
                          calib_samples=calib_samples, calib_len=calib_len, seed=seed,
                          refit_lambda=refit_lambda, calib_skip=calib_skip)


@torch.inference_mode()
def consumer_meters(model: nn.Module, batches: list[torch.Tensor], make_meter) -> dict:
    """Run the model on token batches with a fresh `make_meter()` forward pre-hook on every
    o_proj and down_proj; the meters by module name (what the pruning scores read)."""
    adapter = adapter_for(model)
    meters, hooks = {}, []
    for i, layer in enumerate(adapter.layers(model)):
        p = adapter.projections(layer)
        for short in ("down", "o"):
            meters[adapter.module_name(i, short)] = m = make_meter()
            hooks.append(p[short].register_forward_pre_hook(m))
    try:
        with evaluating(model):
            for x in batches:
                model(input_ids=x, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return meters


def input_norms(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """||X||₂ per input column of every down_proj and o_proj (by module name), all tokens."""
    meters = consumer_meters(model, batches, lambda: Moments(full=False))
    return {name: m.total.sqrt().float() for name, m in meters.items()}


def wanda_sp_llm(model: nn.Module, sparsity: float | None = None, *, tokenizer=None,
                 batches: list[torch.Tensor] | None = None, n_samples: int = 16,
                 seq_len: int = 512, schedule="uniform", head_ratio: float | None = None,
                 mlp_ratio: float | None = None, gqa: str = "kv-groups",
                 seed: int = 0, repair: str | None = None, calib_samples: int = 16,
                 calib_len: int = 128, refit_lambda: float = 3.0,
                 calib_skip: int = CALIB_SKIP) -> nn.Module:
    """Wanda-sp at the same per-layer sizes as folding; needs calibration text.

    Give `batches` (token-id tensors) or a `tokenizer` to draw n_samples windows
    from the calibration text (tuneless.llm.calibration). `repair`: folding's
    least-squares repair on the pruned model ("refit" on the same calibration batches,
    "self" on the model's own samples), on equal terms.
    """
    from tuneless.llm.calibration import token_batches

    model = as_linear(check_model(model, "wanda-sp"))  # GPT-2: Conv1D as Linear
    check_call(wanda_sp_llm, {"sparsity": sparsity, "head_ratio": head_ratio,
                              "mlp_ratio": mlp_ratio, "seed": seed, "n_samples": n_samples,
                              "seq_len": seq_len}, "wanda-sp")

    batches = token_batches(model, batches, tokenizer, n_samples, seq_len, seed, "wanda-sp")
    plans = plan_for(model, sparsity=sparsity, schedule=schedule, head_ratio=head_ratio,
                     mlp_ratio=mlp_ratio, gqa=gqa)
    norms = input_norms(model, batches)

    adapter = adapter_for(model)

    def decide(i, groups, shape, plan):
        return score_decisions(adapter, groups, shape, plan,
                               wanda_sp_scores(model, groups, norms))

    small = reduce_llm(model, plans, decide, gqa=gqa, desc="wanda-sp")
    data = torch.cat([b[:, :calib_len] for b in batches]) if repair == "refit" else None
    return repair_reduced(model, small, repair, tokenizer=tokenizer, data=data,
                          calib_samples=calib_samples, calib_len=calib_len, seed=seed,
                          refit_lambda=refit_lambda, calib_skip=calib_skip)
