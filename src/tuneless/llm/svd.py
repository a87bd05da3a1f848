"""Plain SVD baseline for LLMs: every projection in the blocks becomes two thin Linears.

Same budget meaning as folding: `sparsity` is the fraction of block parameters
removed. Each (O×I) Linear keeps rank r = ⌊(1−s)·O·I/(O+I)⌋, so every matrix
loses the same fraction; a layer whose rank would not save parameters stays dense.
The result is not a standard LlamaForCausalLM layout (plain from_pretrained cannot
rebuild it); save it with torch.save.
"""

from __future__ import annotations

from torch import nn

from tuneless.errors import TunelessError
from tuneless.llm.adapters import adapter_for
from tuneless.llm.hf import plain_copy
from tuneless.methods.svd import factorise
from tuneless.modelcheck import check_model
from tuneless.options import check_call


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
        seen: set[int] = set()  # fused families name one module several times
        for short, lin in adapter.projections(layer).items():
            if id(lin) in seen:
                continue
            seen.add(id(lin))
            o, i = lin.out_features, lin.in_features
            rank = int((1.0 - sparsity) * o * i / (o + i))
            if rank < 1 or rank >= min(o, i) or rank * (o + i) >= o * i:
                continue
            parent = mlp if short in ("gate", "up", "down") else attn
            setattr(parent, getattr(adapter, short), factorise(lin, rank))
    return new.eval()
