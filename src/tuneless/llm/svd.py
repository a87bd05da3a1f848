"""SVD baselines for LLMs: every projection in the blocks becomes two thin Linears.

Same budget meaning as folding: `sparsity` is the fraction of block parameters
removed. Each (O×I) Linear keeps rank r = ⌊(1−s)·O·I/(O+I)⌋, so every matrix
loses the same fraction; a layer whose rank would not save parameters stays dense.
Plain SVD truncates W; with `whiten` (SVD-LLM style, Wang et al. 2024) it truncates W·L,
where L Lᵀ = E[x xᵀ] over calibration tokens of the projection's input, so the discarded
directions are the ones that change the projection's *outputs* least on those inputs
(Eckart–Young in the whitened space), then maps back: W' = U_r S_r · (V_rᵀ L⁻¹).
The result is not a standard LlamaForCausalLM layout (plain from_pretrained cannot
rebuild it); save it with torch.save.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneless.errors import TunelessError
from tuneless.llm.adapters import adapter_for
from tuneless.llm.conv1d import as_linear
from tuneless.llm.hf import plain_copy
from tuneless.methods.svd import LayerSpectrum, build_pair, factorise
from tuneless.modelcheck import check_model
from tuneless.options import check_call


def whitened_factorise(lin: nn.Linear, rank: int, factor: torch.Tensor) -> nn.Sequential:
    """The rank-`rank` pair minimising E‖(W − W′)x‖² for inputs with E[x xᵀ] = factor·factorᵀ:
    the truncated SVD of W·L, whose right factor maps back by L⁻¹ (built like any pair)."""
    w, L = lin.weight.detach().double(), factor.double()
    u, s, vh = torch.linalg.svd(w @ L, full_matrices=False)
    back = torch.linalg.solve(L.T, vh[:rank].T).T  # V_rᵀ L⁻¹
    spec = LayerSpectrum("", lin, w.shape[0], w.shape[1], u[:, :rank], s[:rank], back)
    return build_pair(spec, rank)


def svd_llm(model: nn.Module, sparsity: float, *, whiten: str | None = None, tokenizer=None,
            data=None, calib_samples: int = 16, calib_len: int = 128,
            seed: int = 0) -> nn.Module:
    """Return a copy whose block projections are truncated-SVD factor pairs.

    whiten: None (plain SVD), "self" (SVD-LLM whitening on text the model samples itself:
    data-free) or "data" (on `data` token ids, or calibration windows with tokenizer=)."""
    model = as_linear(check_model(model, "svd"))  # GPT-2: Conv1D as Linear
    check_call(svd_llm, {"sparsity": sparsity, "calib_samples": calib_samples,
                         "calib_len": calib_len, "seed": seed}, "svd")
    adapter = adapter_for(model)
    if not 0.0 <= sparsity < 1.0:
        raise TunelessError(f"sparsity={sparsity} must be in [0, 1)")
    if whiten not in (None, "self", "data"):
        raise TunelessError(f"whiten={whiten!r}; choose None, 'self' or 'data'")
    factors = None
    if whiten is not None and sparsity > 0:
        from tuneless.llm.activation_stats import input_factors
        from tuneless.llm.fold import calibration_ids

        ids = calibration_ids(model, "self" if whiten == "self" else "refit", tokenizer, data,
                              calib_samples, calib_len, seed)
        factors = input_factors(model, ids)
    new = plain_copy(model)
    if sparsity == 0.0:
        return new.eval()
    reader = {"q": "q", "k": "q", "v": "q", "o": "o", "gate": "gate", "up": "gate",
              "down": "down"}  # whose input each projection reads
    for li, layer in enumerate(adapter.layers(new)):
        attn, mlp = adapter.attention(layer), adapter.mlp_module(layer)
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
            pair = (factorise(lin, rank) if factors is None
                    else whitened_factorise(lin, rank, factors[li][reader[short]]))
            setattr(parent, getattr(adapter, short), pair)
    return new.eval()
