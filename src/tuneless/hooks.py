"""Forward hooks shared by the repairs and calibration statistics: stop a forward pass early
once a hook has what it needs, and capture one module's input or output."""

from __future__ import annotations

import torch
from torch import nn

from tuneless.errors import TunelessError
from tuneless.modes import evaluating


def run_hooked(model: nn.Module, example, handles: list) -> None:
    """One eval-mode, gradient-free forward of `model` on `example` (a tensor or a tuple of
    inputs) with the hooks behind `handles` in place; they are removed afterwards."""
    try:
        with torch.no_grad(), evaluating(model):
            model(*example) if isinstance(example, (tuple, list)) else model(example)
    finally:
        for h in handles:
            h.remove()


class StopForward(Exception):
    """Raised by a hook once it has seen what it needs, to skip the rest of a forward pass."""


def capture(model: nn.Module, module: nn.Module, run, what: str = "input", name: str = ""):
    """What `module` sees ("input": its first positional input; "args": (args, kwargs)) or
    returns ("output") during `run()` (a call of `model`), stopping the pass right there."""
    box: dict = {}

    if what == "output":
        def hook(_m, _args, out):
            box["v"] = out
            raise StopForward
        handle = module.register_forward_hook(hook)
    else:
        def hook(_m, args, kwargs):
            box["v"] = (args, dict(kwargs)) if what == "args" else args[0]
            raise StopForward
        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    except StopForward:
        pass
    finally:
        handle.remove()
    if "v" not in box:
        raise TunelessError(f"layer {name or type(module).__name__!r} did not run in the "
                            f"forward pass of {type(model).__name__}")
    return box["v"]


class Moments:
    """Forward pre-hook: running Σ x xᵀ (full) or Σ x² (diagonal) over the last axis of a
    module's first input, every token or position a sample; skip: leave out the first
    `skip` positions of each sequence (axis 1 of an input of 3 or more axes)."""

    def __init__(self, full: bool, skip: int = 0) -> None:
        self.full, self.total, self.count, self.synced = full, None, 0, False
        self.skip = skip

    def __call__(self, _module, args) -> None:
        x = args[0].detach()
        if self.skip and x.dim() >= 3:
            x = x[:, self.skip:]
        # float64 products: partial sums then agree to ~1e-16 however the tokens are split
        # over ranks or batches (float32 ones differ at 1e-7, enough to flip near-tied k-means
        # assignments: 1 vs 2 processes on the random 3.2 B checkpoint, docs/scaling.md)
        x = x.reshape(-1, x.shape[-1]).double()
        part = (x.T @ x) if self.full else (x * x).sum(0)
        self.total = part if self.total is None else self.total + part
        self.count += x.shape[0]

    def mean(self) -> torch.Tensor:
        """The mean over every token seen, by all ranks under torch.distributed."""
        if not self.synced:
            from tuneless.distributed import all_sum

            count = all_sum(torch.tensor([float(self.count)], dtype=torch.float64))
            self.total, self.count, self.synced = all_sum(self.total), int(count.item()), True
        return self.total / max(self.count, 1)
