"""BatchNorm statistics from images: re-estimation (Fold-R, METHODS.md §1.3) and the
per-channel output statistics a network produces (statistics matching, tuneless.bn_match)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from tuneless.data.loader import image_batches
from tuneless.errors import TunelessError
from tuneless.modelcheck import batchnorms
from tuneless.modes import evaluating


@torch.no_grad()
def reestimate_bn(model: nn.Module, data, *, num_images: int | None = None,
                  batch_size: int = 128, inplace: bool = False) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them from images (REPAIR).

    Running stats become the exact (cumulative, momentum=None) average over the
    batches; only BN layers are in train mode, so dropout and the like stay off.
    """
    model = model if inplace else copy.deepcopy(model)
    bns = batchnorms(model)
    if not bns:
        raise TunelessError("BN re-estimation needs BatchNorm layers but the model has none")
    from tuneless.distributed import all_sum, merge_batchnorm_stats, my_batches, my_share
    from tuneless.progress import progress

    saved = {bn: (bn.momentum, bn.track_running_stats) for bn in bns}
    seen = 0
    with evaluating(model):  # every module's own mode restored at the end
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.track_running_stats = True
            bn.train()
        try:
            total = None if num_images is None else my_share(-(-num_images // batch_size))
            batches = my_batches(image_batches(data, batch_size, num_images))  # this rank's
            for x in progress(batches, total=total, desc="BN re-estimation", unit="batch"):
                model(x)
                seen += len(x)
            merge_batchnorm_stats(bns)
            seen = int(all_sum(torch.tensor([seen])).item())
        finally:
            for bn, (momentum, track) in saved.items():
                bn.momentum, bn.track_running_stats = momentum, track
    if seen < 2:
        raise TunelessError(f"BN re-estimation needs at least 2 images, got {seen}")
    return model


@torch.no_grad()
def output_statistics(model: nn.Module, names: list[str], data, num_images: int | None,
                      batch_size: int) -> tuple[dict, dict]:
    """Per module name: the per-channel (axis 1) mean and standard deviation of its output
    over `data`, the model in eval mode (float64 sums; all ranks under torch.distributed)."""
    from tuneless.distributed import all_sum, my_batches

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def record(_m, _args, out):
            dims = [0, *range(2, out.dim())]
            o = out.detach().double()
            part = torch.stack([o.sum(dims), (o * o).sum(dims)])
            sums[name] = part if name not in sums else sums[name] + part
            counts[name] = counts.get(name, 0) + out.numel() // out.shape[1]
        return record

    hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with evaluating(model):
            for x in my_batches(image_batches(data, batch_size, num_images)):
                model(x)
    finally:
        for h in hooks:
            h.remove()
    mean, std = {}, {}
    for n in names:
        if n not in sums:
            raise TunelessError(f"statistics matching: {n} did not run on the images")
        total = all_sum(sums[n])
        count = float(all_sum(torch.tensor([float(counts[n])], dtype=torch.float64)))
        mu = total[0] / count
        mean[n] = mu.float()
        std[n] = (total[1] / count - mu * mu).clamp(min=0).sqrt().float()
    return mean, std
