"""A model's train/eval modes held for a block and restored: tuneless runs users' own models
(tracing, probing, counting FLOPs) and must leave every module's mode as it found it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration (no running-statistics updates), every module's mode
    restored after (the reference may be the user's model)."""
    modes = {m: m.training for m in model.modules()}
    try:  # a model already in eval mode is left alone: the allocation's trials run
        # hundreds of times, and walking every module twice cost efficientnet_b0 ~1 s
        yield model.eval() if any(modes.values()) else model
    finally:
        for m, mode in modes.items():
            if m.training != mode:
                m.training = mode
