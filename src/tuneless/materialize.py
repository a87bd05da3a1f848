"""Convolutions and linear layers whose weight is computed in forward, as plain layers.

Weight-standardised convolutions (timm's StdConv2d / ScaledStdConv2d in NF-ResNets and
NFNets, transformers' BiT) standardise each output channel's weights over its fan-in on
every call. Removing or merging *input* channels changes that fan-in and with it every
output channel's statistics, so such a layer cannot be a consumer of a reduced group, and
the tracer sees only a functional convolution whose weight is not a parameter. For
inference the layer is a plain convolution with the weight it computes: this module swaps
each such layer (on a copy) for an nn.Conv*d / nn.Linear holding that weight, checked to
give the same outputs, so that the engine can fold and prune through it. Layers that make
more than one call of their functional op, or call it on a transformed input (dynamic
padding), are left as they are.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from tuneless.hooks import run_hooked
from tuneless.modes import evaluating

_BASES = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d", nn.Linear: "linear"}


def _base(m: nn.Module):
    """(base class, functional name) of a layer whose forward is its own, else None."""
    for base, fn in _BASES.items():
        if isinstance(m, base) and type(m).forward is not base.forward:
            return base, fn
    return None


def computed_weight_layers(model: nn.Module) -> list[str]:
    """Names of conv / linear subclasses that override forward (candidates)."""
    return [name for name, m in model.named_modules() if name and _base(m) is not None]


def materialize_weights(model: nn.Module, example) -> nn.Module:
    """`model` itself when no layer computes its weight in forward, else a copy in which
    every such layer (computed_weight_layers) that makes exactly one functional call on its
    own input is a plain layer holding the weight of that call; the copy's
    `tuneless_materialized` lists them. Same outputs (each swap is checked on the layer's
    input from one forward pass of `example`)."""
    names = computed_weight_layers(model)
    if not names:
        return model
    inputs = _layer_inputs(model, names, example)
    plain = {}
    for name in names:
        if name in inputs:
            layer = _plain_layer(model.get_submodule(name), inputs[name])
            if layer is not None:
                plain[name] = layer
    if not plain:
        return model
    from tuneless.reduce import remember_original

    out = copy.deepcopy(model)
    for name, layer in plain.items():
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, attr, layer)
    out.tuneless_materialized = sorted(plain)
    remember_original(out, model)  # a file saved from it checks the user's model, gains too
    return out


def _layer_inputs(model: nn.Module, names: list[str], example) -> dict[str, torch.Tensor]:
    """The first positional input each named layer gets in one eval forward of `example`
    (its first call only)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_m, args, name=name):
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = args[0].detach()
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    run_hooked(model, example, handles)
    return seen


def _plain_layer(m: nn.Module, x: torch.Tensor) -> nn.Module | None:
    """A plain nn.Conv*d / nn.Linear computing what `m` computes on inputs like x, or None."""
    base, fn = _base(m)
    calls = []
    original = getattr(F, fn)

    def record(inp, weight, bias=None, *args, **kwargs):  # the geometry: checked on outputs
        calls.append((inp, weight, bias))
        return original(inp, weight, bias, *args, **kwargs)

    setattr(F, fn, record)
    try:
        with torch.no_grad(), evaluating(m):
            want = m(x)
    except Exception:  # noqa: BLE001 — a layer this does not understand stays as it is
        return None
    finally:
        setattr(F, fn, original)
    if len(calls) != 1 or not isinstance(want, torch.Tensor):
        return None
    inp, weight, bias = calls[0]
    if inp is not x or weight.shape != m.weight.shape or bias is not m.bias:
        return None  # the input was transformed first (e.g. padded), or other tensors used
    layer = _like(m, base)
    if layer is None:
        return None
    with torch.no_grad():
        layer.weight.copy_(weight.detach())
        if bias is not None:
            layer.bias.copy_(bias.detach())
        got = layer(x)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
        return None
    layer.train(m.training)
    return layer


def _like(m: nn.Module, base) -> nn.Module | None:
    """A fresh base-class layer with m's geometry, on m's device and dtype."""
    dd = {"device": m.weight.device, "dtype": m.weight.dtype}
    if base is nn.Linear:
        return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, **dd)
    if isinstance(m.padding, str) and m.padding not in ("same", "valid"):
        return None
    return base(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                padding=m.padding, dilation=m.dilation, groups=m.groups,
                bias=m.bias is not None, padding_mode=m.padding_mode, **dd)


def materialized_report(model: nn.Module) -> dict:
    """{"materialized": [...]} for a report when layers were swapped, else {}."""
    names = getattr(model, "tuneless_materialized", None)
    return {"materialized": list(names)} if names else {}
