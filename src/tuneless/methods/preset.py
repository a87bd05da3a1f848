"""Registry entries that are a general method with one option fixed (prune-l1, fold-ar, ...)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn


def preset(
    func: Callable[..., nn.Module], name: str, doc: str, **fixed
) -> Callable[..., nn.Module]:
    """`func` with `fixed` keyword options bound, in the registry's calling convention."""

    def method(model: nn.Module, *, example_inputs=None, sparsity: float | None = None,
               channel_ratio: float | None = None, **options) -> nn.Module:
        return func(model, sparsity=sparsity, channel_ratio=channel_ratio,
                    example_inputs=example_inputs, **fixed, **options)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc
    method.__wrapped_method__ = func  # whose options tuneless.methods.check_options reads
    method.fixed = dict(fixed)  # e.g. the repair, whose declarations the CLI reads
    return method
