"""DeepInversion: synthesise images from a trained network's own BatchNorm statistics.

Fold-DIR needs images without a dataset. Every BN layer remembers the mean and
variance of its input over the training set; optimising random inputs until each
layer's batch statistics match them (plus cross-entropy to random classes and small
smoothness priors) gives images whose activations look like real ones (Yin et al.,
CVPR 2020). The model is never modified: only the images receive gradients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tuneless.errors import TunelessError
from tuneless.modelcheck import batchnorms
from tuneless.modes import evaluating


@dataclass
class InversionConfig:
    # Defaults sized for this project's 2-core CPU: a ResNet-56 forward+backward of 64
    # images took 6.5 s at 1 thread on a heavily shared machine (~1.5 s when idle), so
    # 2 batches × 100 steps is a few minutes idle. Raise steps/images for better images.
    num_images: int = 128
    batch_size: int = 64
    steps: int = 100
    lr: float = 0.1
    bn_weight: float = 1.0  # per-layer ||μ − μ̂|| + ||σ² − σ̂²||, summed over BN layers
    first_bn_multiplier: float = 10.0  # the first layer sees the raw image statistics
    ce_weight: float = 1.0
    tv_weight: float = 1e-4  # squared total variation (smoothness prior)
    l2_weight: float = 1e-5  # keeps pixel values bounded
    jitter: int = 2  # random shifts in pixels, applied each step
    flip: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _check(cfg: InversionConfig) -> None:
    if cfg.num_images < 2 or cfg.batch_size < 2:
        raise TunelessError("DeepInversion needs num_images ≥ 2 and batch_size ≥ 2 (BN statistics)")
    if cfg.steps < 1 or cfg.lr <= 0:
        raise TunelessError("DeepInversion needs steps ≥ 1 and lr > 0")


def synthesize(model: nn.Module, example_inputs: torch.Tensor,
               config: InversionConfig | None = None, progress=None, **overrides) -> torch.Tensor:
    """Return config.num_images synthetic inputs shaped like example_inputs (without its batch)."""
    cfg = config or InversionConfig()
    if overrides:
        cfg = InversionConfig(**{**cfg.to_dict(), **overrides})
    _check(cfg)
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 2:
        raise TunelessError("DeepInversion needs example_inputs: a batch of inputs (N × C × H × W)")
    bns = batchnorms(model)
    if not bns:
        raise TunelessError("DeepInversion matches BatchNorm statistics but the model has none")

    shape = tuple(example_inputs.shape[1:])
    stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def make_hook(i: int):
        def hook(module, inputs, _output):
            stats[i] = channel_stats(inputs[0])
        return hook

    handles = [bn.register_forward_hook(make_hook(i)) for i, bn in enumerate(bns)]
    targets_mean = [bn.running_mean.detach().clone() for bn in bns]
    targets_var = [bn.running_var.detach().clone() for bn in bns]
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    try:
        with evaluating(model):  # every module's own mode restored at the end
            with torch.no_grad():
                num_classes = model(example_inputs[:2].float()).shape[1]
            stats.clear()
            done = 0
            while done < cfg.num_images:
                b = min(cfg.batch_size, cfg.num_images - done)
                b = b if b >= 2 else 2
                out.append(_invert_batch(model, shape, b, num_classes, cfg, g, stats,
                                         targets_mean, targets_var, progress))
                done += b
    finally:
        for h in handles:
            h.remove()
    return torch.cat(out)[: cfg.num_images]


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel (axis 1): the mean and the biased variance over every other axis, both
    differentiable. The variance is the mean square about the mean held constant: Tensor.var's
    value and gradient (the mean's term of it vanishes) at half its cost — its CPU reduction
    over the batch and pixel axes of an NCHW tensor was a third of each DeepInversion step."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims)
    centred = x - mean.detach().view(1, -1, *([1] * (x.dim() - 2)))
    return mean, (centred * centred).mean(dims)


def _invert_batch(model, shape, b, num_classes, cfg, g, stats, t_mean, t_var, progress):
    x = torch.randn((b, *shape), generator=g).requires_grad_(True)
    y = torch.randint(0, num_classes, (b,), generator=g)
    opt = torch.optim.Adam([x], lr=cfg.lr, betas=(0.5, 0.9), eps=1e-8)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    for _ in range(cfg.steps):
        inp = x
        if cfg.jitter and x.dim() == 4:
            dx, dy = torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=g).tolist()
            inp = torch.roll(inp, shifts=(dx, dy), dims=(2, 3))
        if cfg.flip and x.dim() == 4 and bool(torch.rand(1, generator=g) < 0.5):
            inp = torch.flip(inp, dims=(3,))
        stats.clear()
        logits = model(inp)
        bn_loss = 0.0
        for i, (m, v) in stats.items():  # BN layers in module order; unused ones are skipped
            w = cfg.first_bn_multiplier if i == 0 else 1.0
            bn_loss = bn_loss + w * (torch.norm(m - t_mean[i], 2) + torch.norm(v - t_var[i], 2))
        loss = (cfg.ce_weight * F.cross_entropy(logits, y) + cfg.bn_weight * bn_loss
                + cfg.tv_weight * _tv(x) + cfg.l2_weight * x.pow(2).sum() / b)
        (grad,) = torch.autograd.grad(loss, [x])
        x.grad = grad
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if progress is not None:
            progress(1)
    return x.detach()


def _tv(x: torch.Tensor) -> torch.Tensor:
    """Squared total variation per image (mean over pixels, summed over the batch)."""
    if x.dim() < 4:
        return x.new_zeros(())
    dh = x[:, :, 1:, :] - x[:, :, :-1, :]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    return (dh.pow(2).mean((1, 2, 3)) + dw.pow(2).mean((1, 2, 3))).sum()
