"""Function-preserving channel rescaling before folding (`fold(..., balance=True)`).

A channel whose output reaches its readers only through positively homogeneous
operations (ReLU, LeakyReLU, max or average pooling, flattening) can be multiplied by
any α > 0 — its BatchNorm γ and β, or its producer's row and bias where no BN follows —
while every consumer column it feeds is divided by α: the network is unchanged. Folding
does not see this symmetry: it averages γ/β and sums consumer columns, so two channels
that compute the same thing at different scales neither cluster together nor merge
exactly. `balance_scales` puts every such channel in one canonical scale first: the norm
of what defines its output (γ and β) equal to the norm of its consumer columns. Two
channels that differ only by the symmetry then become identical, and k-means distances
stop depending on an arbitrary split of scale between layers.

Which groups qualify is measured, not assumed from module types: the model runs on the
example input with the candidate channels scaled by a large factor (16, then 1/16)
and compensated, and only groups whose output then stays the same within float
tolerance are balanced (ReLU6, SiLU, GELU, sigmoid and a residual add all fail that
test; ReLU6 only above its clamp, hence the large factor).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from tuneless.graph.groups import CONSUMER, NORM, PRODUCER, ChannelGroup, Slot
from tuneless.modes import evaluating

_PROBE = 16.0  # the test scale: large enough to push a ReLU6 input past its clamp


def _scale_slot(model: nn.Module, slot: Slot, n: int, factor: torch.Tensor) -> None:
    """In place: multiply everything `slot` holds for channel i by factor[i]."""
    t = slot.tensor(model)
    region = t.data.narrow(slot.axis, slot.offset * slot.block, n * slot.block)
    f = factor.to(region.dtype).repeat_interleave(slot.block)
    shape = [1] * region.dim()
    shape[slot.axis] = -1
    region.mul_(f.reshape(shape))


def _parts(group: ChannelGroup) -> tuple[list[Slot], list[Slot]] | None:
    """(slots that define the channels' output, consumer slots) of a group the symmetry
    can apply to, or None: one producer, consumers that are conv/linear input axes, no
    depthwise layer, nothing else on the channels but that producer's norm."""
    if group.fixed or any(s.depthwise for s in group.slots):
        return None
    producers = {s.module for s in group.slots if s.kind == PRODUCER}
    consumers = [s for s in group.slots if s.kind == CONSUMER]
    if len(producers) != 1 or not consumers:
        return None
    if any(s.param != "weight" or s.axis != 1 or s.groups > 1 for s in consumers):
        return None  # a grouped conv's input axis holds a block per row block (left as is)
    (prod,) = producers
    norms = [s for s in group.slots if s.kind == NORM]
    if norms:
        if any(s.producer != prod for s in norms):
            return None
        affine = [s for s in norms if s.param in ("weight", "bias")]
        if len(affine) != 2 or any(s.param not in ("weight", "bias", "running_mean",
                                                     "running_var", "num_batches_tracked")
                                   for s in norms):
            return None
        return affine, consumers
    return [s for s in group.slots if s.kind == PRODUCER], consumers


def _apply(model: nn.Module, group: ChannelGroup, parts, factor: torch.Tensor) -> None:
    out, consumers = parts
    for s in out:
        _scale_slot(model, s, group.n, factor)
    for s in consumers:
        _scale_slot(model, s, group.n, 1.0 / factor)


def same_output(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Whether a function-preserving rewrite kept a network's output on its probe input:
    equal within float tolerance relative to the output's largest magnitude (shared by
    this module and the BN fusion check of tuneless.methods.fold)."""
    scale = before.abs().max().clamp(min=1e-6)
    return bool(torch.allclose(before, after, atol=1e-4 * float(scale), rtol=1e-3))


def _homogeneous(model: nn.Module, graph, x, ref: torch.Tensor) -> dict[int, tuple]:
    found = {}
    for g in graph.groups:
        parts = _parts(g)
        if parts is None:
            continue
        ok = True
        for probe in (_PROBE, 1.0 / _PROBE):
            factor = torch.full((g.n,), probe)
            _apply(model, g, parts, factor)
            ok = ok and same_output(ref, model(x))
            _apply(model, g, parts, 1.0 / factor)
        if ok:
            found[g.id] = parts
    return found


@torch.no_grad()
def homogeneous_groups(model: nn.Module, graph, x) -> dict[int, tuple]:
    """{group id: its (output, consumer) slots} for every group the rescaling symmetry
    holds for on `x` (module docstring). Leaves the model as it was."""
    with evaluating(model):
        return _homogeneous(model, graph, x, model(x))


@torch.no_grad()
def balance_scales(model: nn.Module, graph, x) -> list[int]:
    """In place: give every channel of a homogeneous group (see `homogeneous_groups`) the
    scale at which ‖(γ, β)‖ (or its producer row and bias) equals ‖its consumer columns‖.
    Returns the ids of the groups balanced; the function is checked unchanged on `x`."""
    if not isinstance(x, torch.Tensor):
        return []
    with evaluating(model):
        ref = model(x)
        groups = _homogeneous(model, graph, x, ref)
        if not groups:
            return []
        done = []
        for g in graph.groups:
            if g.id not in groups:
                continue
            out, consumers = groups[g.id]
            a = torch.cat([s.channel_rows(model, g.n).float() for s in out], 1).norm(dim=1)
            c = torch.cat([s.channel_rows(model, g.n).float() for s in consumers], 1).norm(dim=1)
            live = (a > 0) & (c > 0)
            factor = torch.ones(g.n)
            factor[live] = (c[live] / a[live]).sqrt()
            _apply(model, g, groups[g.id], factor)
            done.append((g, factor))
        if not same_output(ref, model(x)):  # not expected after the probes: undo it all
            for g, factor in done:
                _apply(model, g, groups[g.id], 1.0 / factor)
            return []
        return [g.id for g, _ in done]
