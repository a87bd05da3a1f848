"""The input side of a layer's truncation error: how large each input direction is.

Truncating W to rank r costs E‖(W − W_r)x‖², which is ‖(W − W_r)L‖²_F for LLᵀ = E[xxᵀ],
not ‖W − W_r‖²_F: a direction the inputs never excite costs nothing. Two estimates of L
for a conv/linear layer's input (the conv's input patches, in the weight's column order
C_in × k):

- `bn_input_scales` (data-free): when the layer reads a BatchNorm's output through
  element-wise ops, pooling or flattening, that BN's running statistics give each input
  channel's second moment: y = γẑ + β with ẑ ~ N(0, 1), E[y²] = γ² + β², and after a ReLU
  E[relu(y)²] = (β² + γ²)Φ(β/|γ|) + β|γ|φ(β/|γ|). L is diagonal (channels independent).
- `input_second_moments` (data): E[xxᵀ] of the input patches on real images (a sample of
  positions per image), whose Cholesky factor is L — SVD-LLM's whitening.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from tuneless.errors import TunelessError
from tuneless.graph.trace import is_plain_batchnorm
from tuneless.hooks import Moments
from tuneless.modes import evaluating
from tuneless.patches import conv_patches

_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
                 nn.Dropout, nn.Identity)
_RELUS = (nn.ReLU, nn.ReLU6)
_PASS_FUNCS = {"relu", "flatten", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
               "dropout", "reshape", "view", "contiguous"}


def relu_second_moment(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """E[relu(y)²] for y ~ N(mean, std²), elementwise."""
    std = std.abs().clamp_min(1e-12)
    t = mean / std
    cdf = 0.5 * (1 + torch.erf(t / math.sqrt(2)))
    pdf = torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    return ((mean * mean + std * std) * cdf + mean * std * pdf).clamp_min(0)


def _feeding_norm(node, modules) -> tuple[nn.Module | None, bool]:
    """Walk back from a layer's input through ops that keep channels apart; the BatchNorm
    reached (or None) and whether a ReLU was passed."""
    relu = False
    while True:
        if node.op == "call_module":
            mod = modules.get(node.target)
            if is_plain_batchnorm(mod):
                return (mod if mod.running_var is not None else None), relu
            if not isinstance(mod, _PASS_MODULES):
                return None, relu
            relu = relu or isinstance(mod, _RELUS)
        elif node.op in ("call_function", "call_method"):
            name = getattr(node.target, "__name__", str(node.target))
            if name not in _PASS_FUNCS:
                return None, relu
            relu = relu or name == "relu"
        else:
            return None, relu
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if not args:
            return None, relu
        node = args[0]


LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # what SVD factorises, too


def traced_layers(model: nn.Module) -> tuple[list[tuple[torch.fx.Node, nn.Module]], dict]:
    """The conv/linear calls of the model's torch.fx graph as (node, module), and the
    name → module map; nothing when the model cannot be traced."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:
        return [], {}
    modules = dict(model.named_modules())
    return [(node, modules[node.target]) for node in graph.nodes
            if node.op == "call_module" and isinstance(modules.get(node.target), LAYERS)
            ], modules


def bn_input_scales(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name → RMS of each weight column's input (float64, length C_in·k), for every
    conv/linear whose input comes from one BatchNorm through ReLU, pooling, flattening or
    dropout. Empty if the model cannot be traced by torch.fx."""
    layers, modules = traced_layers(model)
    out = {}
    for node, layer in layers:
        if not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        norm, relu = _feeding_norm(node.args[0], modules)
        if norm is None:
            continue
        gamma = (norm.weight.detach().double() if norm.weight is not None
                 else torch.ones_like(norm.running_mean, dtype=torch.float64))
        beta = (norm.bias.detach().double() if norm.bias is not None
                else torch.zeros_like(gamma))
        second = relu_second_moment(beta, gamma) if relu else beta * beta + gamma * gamma
        cols = layer.weight[0].numel()  # C_in · k (a linear: in_features)
        if cols % len(second):
            continue  # the channels do not tile the columns: not this BN's channels
        per = cols // len(second)  # conv: kernel positions; linear after flatten: h·w
        out[node.target] = second.clamp_min(1e-12).sqrt().repeat_interleave(per)
    return out


class _PatchMoments(Moments):
    """Σ xxᵀ (float64) over a linear's input rows, or over sampled input patches of a conv."""

    def __init__(self, layer: nn.Module, positions: int, generator: torch.Generator) -> None:
        super().__init__(full=True)
        self.layer, self.positions, self.gen = layer, positions, generator

    def __call__(self, module, args) -> None:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return super().__call__(module, args)
        cols = conv_patches(layer, args[0].detach()) if isinstance(layer, nn.Conv2d) else None
        if cols is None:
            return None  # other convs: left unwhitened
        n, d, npos = cols.shape
        idx = torch.randperm(npos, generator=self.gen)[:min(self.positions, npos)]
        return super().__call__(module, (cols[:, :, idx].permute(0, 2, 1).reshape(-1, d),))


@torch.no_grad()
def input_second_moments(model: nn.Module, layers: dict[str, nn.Module], data,
                         images: int = 256, batch_size: int = 64, positions: int = 64,
                         seed: int = 0) -> dict[str, torch.Tensor]:
    """Layer name → E[xxᵀ] of its input patches (C_in·k square, float64) over the first
    `images` inputs of `data` (a tensor or an iterable of batches / (input, label)
    pairs), `positions` random patch positions per image (seeded)."""
    from tuneless.data.loader import image_batches

    gen = torch.Generator().manual_seed(seed)
    hooks, moments = [], {}
    for name, layer in layers.items():
        moments[name] = _PatchMoments(layer, positions, gen)
        hooks.append(layer.register_forward_pre_hook(moments[name]))
    seen = 0
    try:
        with evaluating(model):
            for x in image_batches(data, batch_size, images):
                model(x)
                seen += len(x)
    finally:
        for h in hooks:
            h.remove()
    if seen == 0:
        raise TunelessError("whiten='data' needs data= images; none were given")
    return {name: m.mean() for name, m in moments.items() if m.total is not None}


def cholesky_factor(second: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """Lower-triangular L with LLᵀ = E[xxᵀ] + ridge·mean(diag)·I (float64)."""
    d = second.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    lam = ridge * float(second.diagonal().mean().clamp_min(1e-12))
    for _ in range(6):
        factor, info = torch.linalg.cholesky_ex(second + lam * eye)
        if int(info) == 0:
            return factor
        lam *= 10
    raise TunelessError("the input second moment is not positive definite even with a ridge")
