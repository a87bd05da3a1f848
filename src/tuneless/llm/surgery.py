"""Read a decoder layer's weights as tensors and put reduced tensors back as new Linears.

Also keeps the Hugging Face config truthful: uniform sizes go into the standard
fields (so plain `from_pretrained` rebuilds the model); per-layer sizes go into
`config.tuneless_layer_sizes`, which only tuneless.llm.load_folded understands.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tuneless.llm.adapters import LlamaAdapter
from tuneless.llm.plan import LayerPlan, Shape

SHORT = ("q", "k", "v", "o", "gate", "up", "down")


def layer_tensors(adapter: LlamaAdapter, layer: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, lin in adapter.projections(layer).items():
        out[name] = lin.weight.detach()
        if lin.bias is not None:
            out[f"{name}.bias"] = lin.bias.detach()
    return out


def layer_shapes(adapter: LlamaAdapter, model: nn.Module) -> list[Shape]:
    """Each layer's current sizes, read from its modules (a folded model may differ per layer)."""
    hd = adapter.head_dim(model.config)
    shapes = []
    for layer in adapter.layers(model):
        p = adapter.projections(layer)
        n_q, n_kv = p["q"].out_features // hd, p["k"].out_features // hd
        shapes.append(
            Shape(
                hidden=p["q"].in_features,
                head_dim=hd,
                n_q=n_q,
                n_kv=n_kv,
                n_mlp=p["gate"].out_features,
                attn_bias=p["q"].bias is not None,
                o_bias=p["o"].bias is not None,
                mlp_bias=p["gate"].bias is not None,
            )
        )
    return shapes


def _linear(w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    lin.weight = nn.Parameter(w.contiguous(), requires_grad=False)
    if b is not None:
        lin.bias = nn.Parameter(b.contiguous(), requires_grad=False)
    return lin


def set_layer(
    adapter: LlamaAdapter, layer: nn.Module, t: dict[str, torch.Tensor], head_dim: int
) -> None:
    """Replace the seven projections of `layer` by Linears holding the tensors in t."""
    attn, mlp = adapter.attention(layer), getattr(layer, adapter.mlp)
    for short in SHORT:
        parent = mlp if short in ("gate", "up", "down") else attn
        setattr(parent, getattr(adapter, short), _linear(t[short], t.get(f"{short}.bias")))
    n_q, n_kv = t["q"].shape[0] // head_dim, t["k"].shape[0] // head_dim
    attn.num_key_value_groups = n_q // n_kv
    if hasattr(mlp, "intermediate_size"):
        mlp.intermediate_size = t["gate"].shape[0]


def update_config(model: nn.Module, adapter: LlamaAdapter, plans: list[LayerPlan]) -> None:
    cfg = model.config
    cfg.head_dim = adapter.head_dim(cfg)
    sizes = {(p.n_q, p.n_kv, p.n_mlp) for p in plans}
    if len(sizes) == 1:
        n_q, n_kv, n_mlp = sizes.pop()
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size = n_q, n_kv, n_mlp
        if hasattr(cfg, "tuneless_layer_sizes"):
            del cfg.tuneless_layer_sizes
    else:
        cfg.tuneless_layer_sizes = [[p.n_q, p.n_kv, p.n_mlp] for p in plans]


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy with GGUF/quantizer bookkeeping dropped: the weights are plain tensors
    already (GGUF is dequantised on load), and the marker would block save_pretrained."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        model.hf_quantizer = None
    try:
        new = copy.deepcopy(model)
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer
    for attr in ("hf_quantizer",):
        if hasattr(new, attr):
            setattr(new, attr, None)
    if hasattr(new, "is_quantized"):
        try:
            new.is_quantized = False
        except AttributeError:
            pass
    if hasattr(new.config, "quantization_config"):
        del new.config.quantization_config
    return new
