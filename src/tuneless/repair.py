"""Repairs that undo the variance collapse of folding: none, AR (closed form), DIR and data.

Averaging k channels into one shrinks the activation's variance; the next BN then
normalises with statistics that no longer fit. AR rescales the merged BN γ in
closed form (no data); Fold-R re-estimates every BN's running statistics from real
images; DIR does the same from images synthesised from the uncompressed model.
Each repair declares whether it needs data and whether it needs BatchNorm.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from tuneless.errors import TunelessError


@dataclass(frozen=True)
class Repair:
    name: str
    needs_data: bool
    needs_bn: bool
    summary: str


REPAIRS = {
    "none": Repair("none", False, False, "no repair (Fold-Naive)"),
    "ar": Repair("ar", False, True, "closed-form γ rescale from weight correlations (Fold-AR)"),
    "dir": Repair("dir", False, True, "BN re-estimation on DeepInversion images (Fold-DIR)"),
    "data": Repair("data", True, True, "BN re-estimation on real images (Fold-R)"),
    "refit": Repair("refit", True, False, "least-squares refit of every layer on real images "
                    "(beyond the paper; tuneless.layer_refit)"),
}


def get_repair(name: str) -> Repair:
    if name not in REPAIRS:
        raise TunelessError(f"unknown repair {name!r}; choose one of {', '.join(REPAIRS)}")
    return REPAIRS[name]


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def require_batchnorm(model: nn.Module, repair: str) -> None:
    """A repair that works through BatchNorm refuses, by name, a model that has none."""
    if get_repair(repair).needs_bn and not batchnorms(model):
        raise TunelessError(
            f"repair {repair!r} works through BatchNorm layers but the model has none; "
            "use repair='none'"
        )


# --------------------------------------------------------------------------- AR


def ar_factors(rows: torch.Tensor, labels: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Per-cluster γ scale sqrt(N / (1 + (N − 1)·E)), E = mean pairwise cosine of member rows.

    rows are the BN-fused producer rows Ŵ (channels × fan-in). Var of a mean of N
    unit-variance activations with mean pairwise correlation E is (1 + (N−1)E)/N,
    under the paper's assumption of uncorrelated, equal-variance inputs. Guards:
    singletons (and zero rows, whose cosine is taken as 0) keep what the formula
    gives them; E is clamped to [0, 1], so the factor lies in [1, sqrt(N)] and a
    cluster of anti-correlated rows can never blow up (1 + (N − 1)E ≥ 1 > 0).
    """
    if rows.dim() != 2 or labels.dim() != 1 or rows.shape[0] != labels.shape[0]:
        raise TunelessError("ar_factors needs rows (n × f) and one label per row")
    k = int(labels.max()) + 1 if k is None else k
    r = rows.detach().float()  # unit rows: float32 is ample, the sums below are float64
    norms = r.norm(dim=1, keepdim=True)
    unit = r / norms.clamp(min=1e-30)  # zero rows stay zero (cosine taken as 0)
    sums = torch.zeros(k, r.shape[1]).index_add_(0, labels, unit).double()
    self_sim = torch.zeros(k, dtype=torch.float64).index_add_(
        0, labels, (norms.squeeze(1) > 0).double())
    n = torch.bincount(labels, minlength=k).double()
    pairs = (n * (n - 1)).clamp(min=1)
    mean_cos = ((sums * sums).sum(1) - self_sim) / pairs
    mean_cos = torch.where(n > 1, mean_cos.clamp(0.0, 1.0), torch.ones_like(mean_cos))
    return torch.sqrt(n / (1 + (n - 1) * mean_cos)).clamp(min=1.0)


# --------------------------------------------------------------------------- BN re-estimation


def image_batches(data, batch_size: int = 128, limit: int | None = None) -> Iterator[torch.Tensor]:
    """Float image batches from a tensor, a (x, y) DataLoader, a TensorDataset or a TensorLoader."""
    from tuneless.data.loader import TensorDataset, TensorLoader

    if isinstance(data, TensorDataset):
        data = TensorLoader(data, batch_size)
    if isinstance(data, torch.Tensor):
        if data.dim() < 2 or data.shape[0] == 0:
            raise TunelessError("repair data must be a non-empty batch of images (N × ...)")
        source: Iterable = data.split(batch_size)
    elif isinstance(data, Iterable):
        source = data
    else:
        raise TunelessError(
            f"repair data must be a tensor of images or a DataLoader, got {type(data).__name__}"
        )
    seen = 0
    for batch in source:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, dict):
            raise TunelessError("repair data batches must be image tensors, not dicts")
        if not isinstance(x, torch.Tensor):
            raise TunelessError(f"repair data yielded {type(x).__name__}, expected image tensors")
        if limit is not None:
            x = x[: limit - seen]
        if len(x) == 0:
            break
        yield x.float()
        seen += len(x)
        if limit is not None and seen >= limit:
            break


@torch.no_grad()
def reestimate_bn(model: nn.Module, data, *, num_images: int | None = None,
                  batch_size: int = 128, inplace: bool = False) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them from images (REPAIR).

    Running stats become the exact (cumulative, momentum=None) average over the
    batches; only BN layers are in train mode, so dropout and the like stay off.
    """
    import copy

    model = model if inplace else copy.deepcopy(model)
    bns = batchnorms(model)
    if not bns:
        raise TunelessError("BN re-estimation needs BatchNorm layers but the model has none")
    was_training = model.training
    saved = {bn: (bn.momentum, bn.track_running_stats) for bn in bns}
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.track_running_stats = True
        bn.train()
    seen = 0
    try:
        for x in image_batches(data, batch_size, num_images):
            model(x)
            seen += len(x)
    finally:
        for bn, (momentum, track) in saved.items():
            bn.momentum, bn.track_running_stats = momentum, track
        model.train(was_training)
    if seen < 2:
        raise TunelessError(f"BN re-estimation needs at least 2 images, got {seen}")
    return model


def describe() -> str:
    return "; ".join(f"{r.name}: {r.summary}" + (" [needs data]" if r.needs_data else "")
                     for r in REPAIRS.values())



# --------------------------------------------------------------------------- BN fusion (AR step 1)


def bn_producers(graph) -> dict[str, str]:
    """BatchNorm module name → the conv/linear that feeds it directly (from the norm slots)."""
    out = {}
    for g in graph:
        for s in g.norms:
            if s.producer is not None:
                out.setdefault(s.module, s.producer)
    return out


@torch.no_grad()
def fuse_bn_normalisation(model: nn.Module, graph) -> list[str]:
    """In place: fold each BN's 1/sqrt(var + eps) and mean into the conv/linear before it.

    Ŵ = W / sqrt(var + eps), bias / sqrt(var + eps), running_mean / sqrt(var + eps) and
    running_var = 1 − eps, so the BN then applies only γ and β and the network computes
    the same function. The fused bias (b − mean)/sqrt(var + eps) is carried by the
    conv bias and the BN's running_mean together, so no parameter is added.
    Returns the fused BN names.
    """
    fused = []
    for bn_name, prod_name in bn_producers(graph).items():
        bn = model.get_submodule(bn_name)
        prod = model.get_submodule(prod_name)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
            continue
        if not isinstance(prod, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        if prod.weight.shape[0] != bn.running_var.shape[0]:
            continue
        scale = 1.0 / torch.sqrt(bn.running_var + bn.eps)
        prod.weight.mul_(scale.view(-1, *([1] * (prod.weight.dim() - 1))).to(prod.weight.dtype))
        if prod.bias is not None:
            prod.bias.mul_(scale)
        bn.running_mean.mul_(scale)
        bn.running_var.fill_(1.0 - bn.eps)
        fused.append(bn_name)
    return fused
