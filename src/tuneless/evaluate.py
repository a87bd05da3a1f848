"""Accuracy, parameter counts, FLOPs, size on disk and CPU latency of a model.

`evaluate` gathers them all into one flat dict, the row that `tuneless eval`,
the demo and the benchmarks print with tuneless.report.
"""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn as nn

from tuneless._lazy import make_module_callable
from tuneless.data.loader import TensorDataset, TensorLoader
from tuneless.errors import TunelessError, first_line
from tuneless.modes import evaluating


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset, batch_size: int = 500,
             limit: int | None = None) -> float:
    """Top-1 accuracy on the first `limit` examples (all by default), in eval mode.

    Every module's train/eval mode is restored afterwards.
    """
    from tuneless.progress import progress

    correct = seen = 0
    n = len(data) if limit is None else min(limit, len(data))
    with evaluating(model):
        for x, y in progress(TensorLoader(data, batch_size), total=-(-n // batch_size),
                             desc="accuracy", unit="batch"):
            if limit is not None and seen + len(y) > limit:
                x, y = x[: limit - seen], y[: limit - seen]
            correct += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
            if limit is not None and seen >= limit:
                break
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

    # the counter's module tracker hooks every output that requires grad, and fails on one
    # with no autograd history (Perceiver hands out a view of its position-embedding table)
    params = [p for p in model.parameters() if p.requires_grad]
    counter = FlopCounterMode(display=False)
    try:
        for p in params:
            p.requires_grad_(False)
        with evaluating(model), counter:
            model(example)
    finally:
        for p in params:
            p.requires_grad_(True)
    return int(counter.get_total_flops())


def size_on_disk(model: nn.Module) -> int:
    """Bytes of the model's state_dict as torch.save writes it."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


@torch.no_grad()
def latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 10,
               warmup: int = 2) -> float:
    """Median wall-clock milliseconds of a forward pass on this CPU."""
    times = []
    with evaluating(model):
        for _ in range(warmup):
            model(example)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(example)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def batch_of(example: torch.Tensor, batch: int) -> torch.Tensor:
    """`example` (one input with a leading batch axis of 1) repeated to `batch` rows."""
    return example[:1].expand(batch, *example.shape[1:]).contiguous()


@torch.no_grad()
def check_runs(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    """One forward pass in eval mode (every module's own mode restored after, a frozen
    BatchNorm inside a training model too); a shape mismatch becomes a one-line
    TunelessError."""
    try:
        with evaluating(model):
            return model(example)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise TunelessError(
            f"the model does not accept inputs of shape {tuple(example.shape)}: "
            f"{first_line(exc, 160)}"
        ) from exc


def evaluate(
    model: nn.Module,
    data: TensorDataset | None = None,
    example: torch.Tensor | None = None,
    *,
    limit: int | None = None,
    latency_batches: Sequence[int] = (1, 256),
    repeats: int = 10,
    path: str | os.PathLike | None = None,
) -> dict:
    """All the numbers of one model as a flat dict (a row for tuneless.report).

    `example` is one input (batch axis of 1) for FLOPs and latency; it defaults to the
    first image of `data`. Accuracy is measured only when `data` is given, on a seeded
    random subset of `limit` examples if asked (test splits are stored sorted by class,
    so the first N would be one class); `path` adds the size of that file on disk.
    """
    if example is None:
        if data is None:
            raise TunelessError("evaluate needs test data or an example input")
        example = data.normalise(data.x[:1])
    out = check_runs(model, example)
    if data is not None and out.ndim == 2 and out.shape[1] != len(data.classes):
        raise TunelessError(
            f"the model has {out.shape[1]} outputs but {data.name} has {len(data.classes)} classes"
        )
    row: dict = {}
    if data is not None:
        if limit is not None and limit < len(data):
            data = data.subset(limit, seed=0)
        row["top1"] = accuracy(model, data)
        row["eval_images"] = len(data)
    row["params"] = count_params(model)
    row["nonzero_params"] = count_params(model, nonzero=True)
    row["flops"] = count_flops(model, example)
    row["weights_bytes"] = size_on_disk(model)
    if path is not None:
        row["file_bytes"] = os.path.getsize(path) if os.path.isfile(path) else None
    for b in latency_batches:
        reps = repeats if b <= 16 else max(3, repeats // 3)
        row[f"latency_b{b}_ms"] = latency_ms(model, batch_of(example, b), repeats=reps,
                                              warmup=1 if b > 16 else 2)
    return row

make_module_callable(__name__)  # `tuneless.evaluate` is both this module and its function
