"""Accuracy, parameter counts, FLOPs, size on disk and CPU latency of a model."""

from __future__ import annotations

import io
import statistics
import time

import torch
import torch.nn as nn

from tuneless.data.loader import TensorDataset, TensorLoader


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset, batch_size: int = 500,
             limit: int | None = None) -> float:
    """Top-1 accuracy in eval mode (the model's train/eval mode is restored)."""
    was_training = model.training
    model.eval()
    correct = seen = 0
    for x, y in TensorLoader(data, batch_size):
        correct += (model(x).argmax(1) == y).sum().item()
        seen += len(y)
        if limit and seen >= limit:
            break
    model.train(was_training)
    return correct / max(seen, 1)


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (or of non-zero parameters, for masked/unstructured pruning)."""
    if nonzero:
        return sum(int((p != 0).sum()) for p in model.parameters())
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass (multiply-add = 2 FLOPs), via torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(example)
    model.train(was_training)
    return int(counter.get_total_flops())


def size_on_disk(model: nn.Module) -> int:
    """Bytes of the model's state_dict as torch.save writes it."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


@torch.no_grad()
def latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall-clock milliseconds of a forward pass on this CPU."""
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        model(example)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(example)
        times.append((time.perf_counter() - t0) * 1000)
    model.train(was_training)
    return statistics.median(times)
