"""GPT-2's projections are transformers' `Conv1D`: a linear layer that stores its weight as
(in, out). The engine, the repairs and the baselines all read `nn.Linear` (out, in), so a
model with Conv1D projections is compressed as a copy whose Conv1Ds are `TransposedLinear`:
an `nn.Linear` in memory that reads and writes its weight in Conv1D's (in, out) layout in
state dicts. Its saved folder is then exactly what plain transformers' GPT-2 loads."""

from __future__ import annotations

import torch
from torch import nn


class TransposedLinear(nn.Linear):
    """nn.Linear whose state-dict weight is (in_features, out_features), as Conv1D's."""

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        key = prefix + "weight"
        w = destination[key]
        destination[key] = w.t() if keep_vars else w.t().contiguous()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "weight"
        if key in state_dict:
            state_dict = {**state_dict, key: state_dict[key].t()}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers absent or reorganised: nothing to convert
        return None
    return Conv1D


def transposed_linear(conv: nn.Module) -> TransposedLinear:
    """A TransposedLinear with the Conv1D's weights (same values, same dtype and device)."""
    n_in, n_out = conv.weight.shape
    new = TransposedLinear(n_in, n_out, bias=conv.bias is not None, dtype=conv.weight.dtype,
                           device=conv.weight.device)
    with torch.no_grad():
        new.weight.copy_(conv.weight.t())
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def as_linear(model: nn.Module, inplace: bool = False) -> nn.Module:
    """`model` itself when it has no Conv1D; else a copy (or, inplace, the model itself) with
    every Conv1D a TransposedLinear (the same function, the same saved checkpoint)."""
    conv1d = _conv1d_type()
    if conv1d is None or not any(isinstance(m, conv1d) for m in model.modules()):
        return model
    from tuneless.llm.hf import plain_copy

    new = model if inplace else plain_copy(model)
    for name, mod in list(new.named_modules()):
        if isinstance(mod, conv1d):
            parent, _, attr = name.rpartition(".")
            setattr(new.get_submodule(parent) if parent else new, attr, transposed_linear(mod))
    return new


def empty_like(old: nn.Module, n_in: int, n_out: int) -> nn.Linear:
    """A new projection of the same kind as `old` (Linear or TransposedLinear), n_in → n_out,
    for loading a checkpoint's weights into (values uninitialised)."""
    cls = TransposedLinear if isinstance(old, TransposedLinear) else nn.Linear
    return cls(n_in, n_out, bias=old.bias is not None, dtype=old.weight.dtype,
               device=old.weight.device)

