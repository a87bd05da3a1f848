"""Refuse models no method can compress sensibly, before any work: not a Module, NaN/Inf.

A NaN in one weight spreads through clustering, SVD and every norm-based ranking, and the
result is a silently broken model; it is cheaper to look once and name the tensor.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn

from tuneless.errors import TunelessError


def check_model(model, method: str) -> nn.Module:
    """`model` if it is an nn.Module whose floating tensors are all finite and hold values
    (not on the meta device); else one line."""
    if not isinstance(model, nn.Module):
        raise TunelessError(f"{method} needs a torch.nn.Module, got {type(model).__name__}")
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if t is not None and t.is_meta:
            raise TunelessError(
                f"the model's {name} is on the meta device (a shape without values: loaded "
                f"with init_empty_weights or an offloading device_map?); {method} needs the "
                "weights themselves")
        if t is not None and t.is_floating_point() and t.numel():
            with torch.no_grad():
                if not bool(torch.isfinite(t).all()):
                    bad = "NaN" if bool(torch.isnan(t).any()) else "Inf"
                    raise TunelessError(
                        f"the model has {bad} values in {name}: {method} cannot compress it "
                        "(repair or re-export the weights first)")
    return model


__all__ = ["check_model"]


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
