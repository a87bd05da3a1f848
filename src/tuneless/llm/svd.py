"""Plain SVD baseline for LLMs: every projection in the blocks becomes two thin Linears.

Same budget meaning as folding: `sparsity` is the fraction of block parameters
removed. Each (O×I) Linear keeps rank r = ⌊(1−s)·O·I/(O+I)⌋, so every matrix
loses the same fraction; a layer whose rank would not save parameters stays dense.
The result is not a standard LlamaForCausalLM layout (plain from_pretrained cannot
rebuild it); save it with torch.save.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneless.errors import TunelessError
from tuneless.llm.adapters import adapter_for
from tuneless.llm.surgery import plain_copy
from tuneless.modelcheck import check_model
from tuneless.options import check_call


def low_rank(lin: nn.Linear, rank: int) -> nn.Sequential:
    """Best rank-`rank` factorisation (truncated SVD) of a Linear as Linear(I→r)·Linear(r→O)."""
    w = lin.weight.detach().float()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    first = nn.Linear(lin.in_features, rank, bias=False, dtype=lin.weight.dtype)
    second = nn.Linear(rank, lin.out_features, bias=lin.bias is not None, dtype=lin.weight.dtype)
    with torch.no_grad():
        first.weight.copy_(vh[:rank])
        second.weight.copy_(u[:, :rank] * s[:rank])
        if lin.bias is not None:
            second.bias.copy_(lin.bias)
    return nn.Sequential(first, second)


def svd_llm(model: nn.Module, sparsity: float) -> nn.Module:
    """Return a copy whose block projections are truncated-SVD factor pairs."""
    check_model(model, "svd")
    check_call(svd_llm, {"sparsity": sparsity}, "svd")
    adapter = adapter_for(model)
    if not 0.0 <= sparsity < 1.0:
        raise TunelessError(f"sparsity={sparsity} must be in [0, 1)")
    new = plain_copy(model)
    if sparsity == 0.0:
        return new.eval()
    for layer in adapter.layers(new):
        attn, mlp = adapter.attention(layer), getattr(layer, adapter.mlp)
        for short, lin in adapter.projections(layer).items():
            o, i = lin.out_features, lin.in_features
            rank = int((1.0 - sparsity) * o * i / (o + i))
            if rank < 1 or rank >= min(o, i) or rank * (o + i) >= o * i:
                continue
            parent = mlp if short in ("gate", "up", "down") else attn
            setattr(parent, getattr(adapter, short), low_rank(lin, rank))
    return new.eval()
