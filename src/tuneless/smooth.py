"""Smoothness penalties for training, so that weights become low-rank friendly (METHODS.md §2.1).

    penalty = SmoothPenalty(model, kind="d2", lam=0.5, relative=True)
    loss = task_loss + penalty(model)

Kinds, summed over every conv and linear layer:
- "d1": ||W[1:] - W[:-1]||² along the output-channel axis (0) and the input-channel axis (1);
- "d2": ||W[2:] - 2 W[1:-1] + W[:-2]||² along the same axes;
- "nuc": the nuclear norm (sum of singular values) of W.reshape(C_out, -1).
An input axis of size ≤ 3 (RGB, grey, depthwise) is skipped. The classifier (the last linear
layer, which produces the logits) is penalised only along its input axis: its output axis is the
class index, which has no order to be smooth in. Our choice: the nuclear norm is not applied to
the classifier either, since lowering its rank merges classes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from tuneless.errors import TunelessError

KINDS = ("d1", "d2", "nuc")
MIN_INPUT_AXIS = 4  # input axes with fewer channels (RGB, grey, depthwise) are not smoothed
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class PenalisedLayer:
    """A layer the penalty reaches, and which axes of its weight it smooths."""

    name: str
    axes: tuple[int, ...]
    classifier: bool


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise TunelessError(
            f"unknown smoothness penalty {kind!r}; choose one of {', '.join(KINDS)}"
        )


def finite_difference_sq(w: torch.Tensor, order: int, axis: int) -> torch.Tensor:
    """Sum of squared first- or second-order differences of w along one axis (0 if too short)."""
    if w.shape[axis] <= order:
        return w.new_zeros(())
    return torch.diff(w, n=order, dim=axis).pow(2).sum()


def nuclear_norm(w: torch.Tensor) -> torch.Tensor:
    """Sum of the singular values of the matricised weight W.reshape(C_out, -1)."""
    return torch.linalg.svdvals(w.reshape(w.shape[0], -1)).sum()


def layer_penalty(w: torch.Tensor, kind: str, axes: tuple[int, ...] = (0, 1)) -> torch.Tensor:
    """R(W) for one weight tensor: d1/d2 summed over `axes`, or the nuclear norm."""
    if kind == "nuc":
        return nuclear_norm(w)
    check_kind(kind)
    order = {"d1": 1, "d2": 2}[kind]
    total = w.new_zeros(())
    for axis in axes:
        total = total + finite_difference_sq(w, order, axis)
    return total


def find_classifier(model: nn.Module) -> str | None:
    """Name of the last nn.Linear in registration order: the layer that produces the logits."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return last


def penalised_layers(model: nn.Module, classifier: str | None = "auto") -> list[PenalisedLayer]:
    """Every conv and linear layer with the axes its weight is smoothed along.

    `classifier` names the logits layer ("auto": the last nn.Linear; None: treat no layer so).
    """
    if classifier == "auto":
        classifier = find_classifier(model)
    modules = dict(model.named_modules())
    if classifier is not None and classifier not in modules:
        raise TunelessError(f"classifier {classifier!r} is not a module of this model")
    layers = []
    for name, m in modules.items():
        if not isinstance(m, _LAYER_TYPES) or not isinstance(m.weight, torch.Tensor):
            continue
        is_cls = name == classifier
        axes = () if is_cls else (0,)
        if m.weight.shape[1] >= MIN_INPUT_AXIS:
            axes = (*axes, 1)
        layers.append(PenalisedLayer(name, axes, is_cls))
    if not layers:
        raise TunelessError(
            f"{type(model).__name__} has no conv or linear layers for a smoothness penalty"
        )
    return layers


def penalty_value(model: nn.Module, kind: str, layers: list[PenalisedLayer] | None = None
                  ) -> torch.Tensor:
    """Σ_layers R(W), unweighted, differentiable."""
    layers = penalised_layers(model) if layers is None else layers
    modules = dict(model.named_modules())
    total = None
    for layer in layers:
        if kind == "nuc" and layer.classifier:
            continue
        try:
            w = modules[layer.name].weight
        except KeyError:
            raise TunelessError(
                f"the penalty was built for a model with layer {layer.name!r}; "
                f"this {type(model).__name__} has none"
            ) from None
        r = layer_penalty(w, kind, layer.axes)
        total = r if total is None else total + r
    if total is None:
        raise TunelessError(f"no layer of {type(model).__name__} takes the {kind!r} penalty")
    return total


def penalty_breakdown(model: nn.Module, kind: str) -> dict[str, float]:
    """R(W) per layer, for reports (no gradient)."""
    out = {}
    with torch.no_grad():
        for layer in penalised_layers(model):
            if kind == "nuc" and layer.classifier:
                continue
            w = dict(model.named_modules())[layer.name].weight
            out[layer.name] = float(layer_penalty(w, kind, layer.axes))
    return out


class SmoothPenalty:
    """λ · Σ_layers R(W) as a callable: `loss = task_loss + penalty(model)`.

    relative=True makes λ scale-free: it is divided by the penalty's value at construction
    (the model should be freshly initialised then), so at initialisation the term equals λ
    whatever the layer sizes or the kind.
    every=N evaluates the penalty only on every N-th call (the first call included) and
    multiplies it by N there, so the average gradient over N steps matches every=1; use it
    for the nuclear norm, whose SVDs are the expensive part. Other calls return 0.
    Measured cost per step (docs/results/penalty_overhead*.md): on ResNet-20 d1/d2 ≈ 1.5% and
    nuc ≈ 3.4% of a batch-128 step; on the 512-wide MLP d1 ≈ 70%, d2 ≈ 100% and nuc ≈ 18× a
    step (its SVDs dominate), so there every=N pays off.
    """

    def __init__(self, model: nn.Module, kind: str = "d2", lam: float = 1e-4, *,
                 relative: bool = False, every: int = 1, classifier: str | None = "auto",
                 reference: float | None = None) -> None:
        check_kind(kind)
        if not isinstance(lam, int | float) or lam < 0 or lam != lam:
            raise TunelessError(f"penalty weight lam must be a number ≥ 0, got {lam!r}")
        if not isinstance(every, int) or every < 1:
            raise TunelessError(f"every must be a positive integer, got {every!r}")
        self.kind, self.lam, self.relative, self.every = kind, float(lam), relative, every
        self.layers = penalised_layers(model, classifier)
        self.calls = 0
        self.reference = None
        if relative:
            if reference is None:
                with torch.no_grad():
                    reference = float(penalty_value(model, kind, self.layers))
            if not reference > 0:
                raise TunelessError(
                    f"relative λ needs a non-zero {kind} penalty at initialisation, "
                    f"got {reference}; use a raw λ (relative=False)"
                )
            self.reference = reference

    @property
    def weight(self) -> float:
        """The effective multiplier of Σ R(W)."""
        return self.lam / self.reference if self.relative else self.lam

    def value(self, model: nn.Module) -> torch.Tensor:
        """Σ_layers R(W) without λ (differentiable)."""
        return penalty_value(model, self.kind, self.layers)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        due = self.calls % self.every == 0
        self.calls += 1
        if not due or self.lam == 0:
            return next(model.parameters()).new_zeros(())
        return (self.weight * self.every) * self.value(model)

    def __repr__(self) -> str:
        lam = f"lam={self.lam:g}"
        if self.relative:
            lam += f" (relative to {self.reference:.4g})"
        return (f"SmoothPenalty(kind={self.kind!r}, {lam}, every={self.every}, "
                f"layers={len(self.layers)})")


def penalty_for_training(cfg) -> Callable[[nn.Module], torch.Tensor]:
    """The extra loss for `tuneless train --smooth ...`, built from a TrainConfig.

    The reference for a relative λ is the penalty of the architecture freshly initialised with the
    training seed (rebuilt here, with the caller's RNG state left alone), so a resumed run uses the
    same λ as the original one.
    """
    from tuneless.zoo import build_model

    check_kind(cfg.smooth)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        # both tuneless datasets have 10 classes, as train() will build the model with
        init_model = build_model(cfg.arch, num_classes=10, **cfg.arch_kwargs)
    penalty = SmoothPenalty(init_model, cfg.smooth, cfg.smooth_lambda, relative=cfg.smooth_relative,
                            every=cfg.smooth_every)
    print(f"smoothness penalty: {penalty!r}", file=sys.stderr, flush=True)
    return penalty


__all__ = ["KINDS", "SmoothPenalty", "check_kind", "finite_difference_sq", "layer_penalty",
           "nuclear_norm", "penalised_layers", "penalty_breakdown",
           "penalty_for_training", "penalty_value"]
