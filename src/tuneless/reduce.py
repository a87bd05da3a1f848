"""Physical reduction: apply one (M, U) pair per channel group and get a smaller model.

For a group with n channels reduced to k:
- M (k×n) acts on producer and norm axes: W' = M·W for conv/linear rows and biases, and
  for every per-channel param/buffer (BN weight, bias, running_mean AND running_var, LN/GN
  weight/bias, layer scales). running_var is mapped by M too: selection for pruning, the
  mean of the members' variances for folding (Fold-Naive); repairs recompute it.
- U (n×k) acts on consumer axes: W'_next = W_next·U; for a flatten→linear consumer U is
  applied per spatial position (each channel = a block of columns).
Pruning: M = rows of the identity, U = Mᵀ. Folding: U = assignment, M = D⁻¹Uᵀ.
The input model is never modified: a deepcopy is rewritten, and every touched module gets
its new sizes (in/out_channels, groups, in/out_features, num_features, normalized_shape).
"""

from __future__ import annotations

import copy
import sys
import types
from collections import defaultdict

import torch
import torch.nn as nn

from tuneless.errors import TunelessError
from tuneless.graph.groups import CONSUMER, GroupGraph, Slot

Decision = tuple[torch.Tensor, torch.Tensor]


def selection(keep: torch.Tensor | list[int], n: int) -> Decision:
    """(M, U) that keep the listed channels (sorted) of an n-channel group: pruning."""
    idx = torch.as_tensor(sorted(int(i) for i in keep), dtype=torch.long)
    if len(idx) == 0 or len(torch.unique(idx)) != len(idx) or idx.min() < 0 or idx.max() >= n:
        raise TunelessError(f"invalid channel selection for a group of {n} channels")
    M = torch.zeros(len(idx), n)
    M[torch.arange(len(idx)), idx] = 1.0
    return M, M.t().contiguous()


@torch.no_grad()
def reduce(model: nn.Module, graph: GroupGraph, decisions: dict[int, Decision]) -> nn.Module:
    """Return a new model with each decided group reduced; groups not in `decisions` stay."""
    plans: dict[tuple[str, str], dict[int, list]] = defaultdict(lambda: defaultdict(list))
    depthwise: set[str] = set()
    for gid, (M, U) in decisions.items():
        g = _checked_group(graph, gid, M, U)
        for s in g.slots:
            mat = U if s.kind == CONSUMER else M
            plans[(s.module, s.param)][s.axis].append((s, g.n, mat))
            if s.depthwise:
                depthwise.add(s.module)
    new = copy.deepcopy(model)
    touched = set()
    for (module, param), by_axis in plans.items():
        owner = new.get_submodule(module) if module else new
        t = getattr(owner, param)
        if not isinstance(t, torch.Tensor):
            raise TunelessError(f"{module}.{param} is not a tensor; cannot reduce it")
        out = t.detach()
        for axis, items in by_axis.items():
            out = _apply_axis(out, axis, items)
        _assign(owner, param, t, out)
        touched.add(module)
    for module in touched:
        _update_attributes(new.get_submodule(module) if module else new, module in depthwise)
    return new


def _checked_group(graph: GroupGraph, gid: int, M, U):
    try:
        g = graph[gid]
    except KeyError:
        raise TunelessError(f"no channel group {gid} in this graph") from None
    if g.fixed:
        raise TunelessError(f"group {gid} is fixed and cannot be reduced: {'; '.join(g.reasons)}")
    M, U = torch.as_tensor(M), torch.as_tensor(U)
    if M.dim() != 2 or U.dim() != 2 or M.shape[1] != g.n or U.shape[0] != g.n \
            or M.shape[0] != U.shape[1] or M.shape[0] < 1:
        raise TunelessError(
            f"group {gid} has {g.n} channels: need M (k×{g.n}) and U ({g.n}×k) with k ≥ 1, "
            f"got M {tuple(M.shape)} and U {tuple(U.shape)}")
    return g


def _apply_axis(t: torch.Tensor, axis: int, items: list[tuple[Slot, int, torch.Tensor]]):
    """Rebuild one axis from its segments: each group's span transformed, the rest copied."""
    items = sorted(items, key=lambda it: it[0].offset * it[0].block)
    pieces, pos = [], 0
    for s, n, mat in items:
        lo, span = s.offset * s.block, n * s.block
        if lo > pos:
            pieces.append(t.narrow(axis, pos, lo - pos))
        ab = mat.t() if s.kind == CONSUMER else mat  # (k, n): new channel j = Σ ab[j, i]·old i
        pieces.append(_combine(ab, t.narrow(axis, lo, span), axis, s.block))
        pos = lo + span
    if pos < t.shape[axis]:
        pieces.append(t.narrow(axis, pos, t.shape[axis] - pos))
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=axis)
    return out.contiguous()


def _combine(ab: torch.Tensor, seg: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """ab (k×n) applied to the n channels (of `block` entries each) along seg's `axis`.

    Selections (pruning) and 0/1 sums (folding consumers) avoid a dense matmul and any
    reordering copy of large tensors.
    """
    ab = ab.detach().cpu()
    k, n = ab.shape
    if ((ab == 0) | (ab == 1)).all():
        rows, cols = ab.nonzero(as_tuple=True)
        if len(rows) == k and torch.equal(rows, torch.arange(k)):
            return seg.index_select(axis, _expand(cols, block))  # pure selection (pruning)
        if seg.is_floating_point() and len(torch.unique(cols)) == len(cols):
            shape = list(seg.shape)
            shape[axis] = k * block
            out = seg.new_zeros(shape)  # each old channel added into one new channel
            return out.index_add_(axis, _expand(rows, block),
                                  seg.index_select(axis, _expand(cols, block)))
    moved = seg.movedim(axis, 0)
    rest = moved.shape[1:]
    flat = moved.reshape(n, -1)
    res = ab.to(dtype=flat.dtype) @ flat if seg.is_floating_point() else ab @ flat
    return res.reshape(k * block, *rest).movedim(0, axis)


def _expand(channels: torch.Tensor, block: int) -> torch.Tensor:
    """Channel indices → entry indices when each channel is `block` consecutive entries."""
    if block == 1:
        return channels
    return (channels[:, None] * block + torch.arange(block)[None, :]).reshape(-1)


def _assign(owner: nn.Module, name: str, old: torch.Tensor, new: torch.Tensor) -> None:
    if isinstance(old, nn.Parameter):
        setattr(owner, name, nn.Parameter(new.clone(), requires_grad=old.requires_grad))
    elif name in owner._buffers:
        owner._buffers[name] = new.clone()
    else:
        setattr(owner, name, new.clone())


def _update_attributes(m: nn.Module, depthwise: bool) -> None:
    """Make a module's size attributes agree with its new tensors."""
    if isinstance(m, nn.modules.conv._ConvNd):
        w = m.weight
        if depthwise:
            m.groups = m.in_channels = m.out_channels = w.shape[0]
        else:
            m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        ref = m.weight if m.weight is not None else m.running_mean
        m.num_features = ref.shape[0]
    elif isinstance(m, nn.LayerNorm | nn.RMSNorm):
        ref = m.weight if m.weight is not None else m.bias
        m.normalized_shape = (ref.shape[0],)
    elif isinstance(m, nn.GroupNorm):
        if m.num_groups == m.num_channels:
            m.num_groups = m.weight.shape[0]
        m.num_channels = m.weight.shape[0]
    elif isinstance(m, nn.PReLU):
        m.num_parameters = m.weight.shape[0]


class _CallableModule(types.ModuleType):
    """`tuneless.reduce` names both this module and its function; once the module is
    imported it shadows the lazy public name, so calling the module calls the function."""

    def __call__(self, *args, **kwargs):
        return reduce(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
