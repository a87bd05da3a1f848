"""Physical reduction: apply one (M, U) pair per channel group and get a smaller model.

For a group with n channels reduced to k:
- M (k×n) acts on producer and norm axes: W' = M·W for conv/linear rows and biases, and
  for every per-channel param/buffer (BN weight, bias, running_mean AND running_var, LN/GN
  weight/bias, layer scales). running_var is mapped by M too: selection for pruning, the
  mean of the members' variances for folding (Fold-Naive); repairs recompute it.
- U (n×k) acts on consumer axes: W'_next = W_next·U; for a flatten→linear consumer U is
  applied per spatial position (each channel = a block of columns).
Pruning: M = rows of the identity, U = Mᵀ (or simply pass the kept indices as a 1-D
tensor instead of (M, U)). Folding: U = assignment, M = D⁻¹Uᵀ.
The input model is never modified: a deepcopy is rewritten, and every touched module gets
its new sizes (in/out_channels, groups, in/out_features, num_features, normalized_shape).
"""

from __future__ import annotations

import copy
from collections import defaultdict

import torch
import torch.nn as nn

from tuneless._lazy import make_module_callable
from tuneless.decisions import Decision, Merge, kept_indices, merge, selection
from tuneless.errors import TunelessError, first_line
from tuneless.graph.groups import CONSUMER, GroupGraph, Slot, Source
from tuneless.modes import evaluating

__all__ = ["Decision", "kept_indices", "merge", "reduce", "reduce_tensors", "selection"]

@torch.no_grad()
def reduce(model: nn.Module, graph: GroupGraph, decisions: dict[int, Decision], *,
           share: bool = False) -> nn.Module:
    """Return a new model with each decided group reduced; groups not in `decisions` stay.

    share=True: the new model shares every tensor it does not rewrite with `model` (its
    modules are fresh, shallow copies), for short-lived trial models whose untouched
    tensors nobody modifies — measuring a group's damage, where a deep copy of the whole
    network cost more than a fifth of the time."""
    plans, depthwise = _plans(graph, decisions)
    # New tensors are computed from the input model, then handed to deepcopy through its
    # memo, so large replaced tensors are never copied twice.
    memo: dict[int, object] = {}
    for (module, param), by_axis in plans.items():
        owner = model.get_submodule(module) if module else model
        t = getattr(owner, param)
        if not isinstance(t, torch.Tensor):
            raise TunelessError(f"{module}.{param} is not a tensor; cannot reduce it")
        out = _rewrite(t, by_axis)
        is_param = isinstance(t, nn.Parameter)
        memo[id(t)] = nn.Parameter(out, requires_grad=t.requires_grad) if is_param else out
    new = _shallow_tree(model, {}) if share else copy.deepcopy(model, memo)
    if share:
        for module, param in plans:
            owner = new.get_submodule(module) if module else new
            t = getattr(owner, param)
            if param in owner._parameters:
                owner._parameters[param] = memo[id(t)]
            elif param in owner._buffers:
                owner._buffers[param] = memo[id(t)]
            else:
                owner.__dict__[param] = memo[id(t)]
    for module in {m for m, _ in plans}:
        _update_attributes(new.get_submodule(module) if module else new, module in depthwise)
    if not share:
        remember_original(new, model)
    return new


@torch.no_grad()
def check_reduced(new: nn.Module, example_inputs, what: str) -> None:
    """Run the reduced model once on the example input (eval mode, restored after): a
    coupling the channel analysis missed (a size read from one tensor and used on another,
    as FocalNet's split does) is a one-line error here, never a model returned broken."""
    x = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
    with evaluating(new):
        try:
            new(*x)
        except Exception as exc:  # noqa: BLE001 — any failure: the reduction is not usable
            raise missed_coupling(new, what, exc) from exc


class MissedCoupling(TunelessError):
    """A reduced model (or an allocation's trial) that does not run: a coupling between
    channel spaces that the analysis did not see."""


def missed_coupling(model: nn.Module, what: str, exc: BaseException) -> MissedCoupling:
    """The one-line error for a reduced model (or an allocation's trial) that does not run."""
    return MissedCoupling(
        f"the {what} {type(model).__name__} does not run on the example input "
        f"({first_line(exc, 160)}): "
        "the channel analysis missed a coupling there; keep those layers whole "
        "(channels= / --option channels=...) and please report the model")


def remember_original(new: nn.Module, model: nn.Module) -> None:
    """new.tuneless_original: the tensor shapes of the model the user started from (kept
    through repeated compressions), so that loading a file saved without an architecture
    reference can check the freshly built model it is given (tuneless.serialize)."""
    original = getattr(model, "tuneless_original", None)
    if not isinstance(original, dict):
        original = {k: list(v.shape) for k, v in model.state_dict().items()}
    new.tuneless_original = original


def _shallow_tree(m: nn.Module, seen: dict[int, nn.Module]) -> nn.Module:
    """A copy of the module tree whose modules and parameter/buffer tables are new objects
    and whose tensors are the original's (a module used twice is copied once)."""
    if id(m) in seen:
        return seen[id(m)]
    c = copy.copy(m)
    seen[id(m)] = c
    c.__dict__["_parameters"] = m._parameters.copy()
    c.__dict__["_buffers"] = m._buffers.copy()
    c.__dict__["_modules"] = m._modules.copy()
    for name, child in m._modules.items():
        if child is not None:
            c._modules[name] = _shallow_tree(child, seen)
    return c


@torch.no_grad()
def reduce_tensors(source: Source, graph: GroupGraph,
                   decisions: dict[int, Decision]) -> dict[str, torch.Tensor]:
    """The rewritten tensors only, by state-dict key, read from a model or a name → tensor
    mapping: the core of `reduce`, for callers that hold tensors rather than modules (the
    streaming folder of checkpoints larger than memory)."""
    plans, _ = _plans(graph, decisions)
    out = {}
    for (module, param), by_axis in plans.items():
        slot = Slot("producer", module, param, 0)
        out[slot.key] = _rewrite(slot.tensor(source), by_axis)
    return out


def _plans(graph: GroupGraph, decisions: dict[int, Decision]):
    """Per tensor and axis, the (slot, n, analysed map) segments to rewrite; depthwise convs."""
    plans: dict[tuple[str, str], dict[int, list]] = defaultdict(lambda: defaultdict(list))
    depthwise: set[str] = set()
    for gid, decision in decisions.items():
        if isinstance(decision, Merge):  # cluster labels: means out, sums in, no k×n maps
            g = _checked_group(graph, gid, None, None)
            if len(decision.labels) != g.n:
                raise TunelessError(f"group {gid} has {g.n} channels, the labels "
                                    f"{len(decision.labels)}")
            produce = _scatter(decision.labels, decision.k, decision.sizes)
            consume = _scatter(decision.labels, decision.k)
        elif isinstance(decision, tuple) and len(decision) == 2:
            M, U = decision
            g = _checked_group(graph, gid, M, U)
            produce, consume = _analyse(torch.as_tensor(M)), _analyse(torch.as_tensor(U).t())
        else:  # kept channel indices: pruning without building k×n matrices
            g = _checked_group(graph, gid, None, None)
            produce = consume = ("select", kept_indices(decision, g.n))
        blocks = _blocks(g, decision) if g.blocks > 1 else None
        for s in g.slots:
            op = consume if s.kind == CONSUMER else produce
            if s.groups > 1:  # a grouped conv's input: each row block maps its own block
                op = ("grouped", blocks)
            plans[(s.module, s.param)][s.axis].append((s, g.n, op))
            if s.depthwise:
                depthwise.add(s.module)
    return plans, depthwise


def _scatter(labels: torch.Tensor, k: int, sizes: torch.Tensor | None = None) -> tuple:
    """The analysed map of a clustering (`_analyse`'s "scatter"): cluster sums, or the
    means given the cluster sizes. Entries come in the order of the dense maps' nonzeros
    (new, then old channel), so the sums add up alike and the weights are bit-identical."""
    old = torch.argsort(labels, stable=True)
    new = labels[old]
    return ("scatter", new, old, k, None if sizes is None else (1.0 / sizes.float())[new])


def _blocks(g, decision) -> list[tuple]:
    """The consumer map of a group read in g.blocks grouped-conv blocks, as one analysed map
    per block; the decision must keep the same count in every block and mix channels only
    within one (cluster(..., blocks=g.blocks) and top_channels do)."""
    nb = g.n // g.blocks
    if isinstance(decision, Merge):
        k, labels = decision.k, decision.labels
        kb = k // g.blocks
        owner = labels // max(kb, 1)
        if k % g.blocks == 0 and bool((owner == torch.arange(g.n) // nb).all()):
            return [_scatter(labels[b * nb:(b + 1) * nb] - b * kb, kb)
                    for b in range(g.blocks)]
    else:
        if isinstance(decision, tuple):
            ab = torch.as_tensor(decision[1]).t().detach().cpu()
        else:
            ab = selection(decision, g.n)[1].t()
        k = ab.shape[0]
        kb = k // g.blocks
        cut = [ab[b * kb:(b + 1) * kb, b * nb:(b + 1) * nb] for b in range(g.blocks)]
        if k % g.blocks == 0 and sum(int((c != 0).sum()) for c in cut) == int((ab != 0).sum()):
            return [_analyse(c) for c in cut]
    raise TunelessError(
        f"group {g.id} is read by a grouped conv in {g.blocks} blocks of {nb} channels: "
        f"a decision must keep the same number in each block and merge only within one "
        f"(got {k} channels)")


def _rewrite(t: torch.Tensor, by_axis: dict[int, list]) -> torch.Tensor:
    out = t.detach()
    for axis, items in by_axis.items():
        out = _apply_axis(out, axis, items)
    return out.clone() if out.data_ptr() == t.data_ptr() else out


def _checked_group(graph: GroupGraph, gid: int, M, U):
    try:
        g = graph[gid]
    except KeyError:
        raise TunelessError(f"no channel group {gid} in this graph") from None
    if g.fixed:
        raise TunelessError(f"group {gid} is fixed and cannot be reduced: {'; '.join(g.reasons)}")
    if M is None:
        return g
    M, U = torch.as_tensor(M), torch.as_tensor(U)
    if M.dim() != 2 or U.dim() != 2 or M.shape[1] != g.n or U.shape[0] != g.n \
            or M.shape[0] != U.shape[1] or M.shape[0] < 1:
        raise TunelessError(
            f"group {gid} has {g.n} channels: need M (k×{g.n}) and U ({g.n}×k) with k ≥ 1, "
            f"got M {tuple(M.shape)} and U {tuple(U.shape)}")
    return g


def _apply_axis(t: torch.Tensor, axis: int, items: list[tuple[Slot, int, tuple]]):
    """Rebuild one axis from its segments: each group's span transformed, the rest copied."""
    if items[0][2][0] == "grouped":  # the whole axis: one block per row block
        ops = items[0][2][1]
        rows = t.shape[0] // len(ops)
        return torch.cat([_combine(op, t.narrow(0, b * rows, rows), axis, 1)
                          for b, op in enumerate(ops)], dim=0).contiguous()
    items = sorted(items, key=lambda it: it[0].offset * it[0].block)
    pieces, pos = [], 0
    for s, n, op in items:
        lo, span = s.offset * s.block, n * s.block
        if lo > pos:
            pieces.append(t.narrow(axis, pos, lo - pos))
        pieces.append(_combine(op, t.narrow(axis, lo, span), axis, s.block))
        pos = lo + span
    if pos < t.shape[axis]:
        pieces.append(t.narrow(axis, pos, t.shape[axis] - pos))
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=axis)
    return out.contiguous()


def _analyse(ab: torch.Tensor) -> tuple:
    """Classify a k×n map (new channel j = Σ ab[j, i]·old i) once per group.

    ("select", cols): each new channel copies one old channel (pruning);
    ("scatter", rows, cols, k, vals): each old channel feeds at most one new one, with
    weight vals (cluster means), or vals None for plain 0/1 sums (folding consumers);
    ("dense", ab): anything else (general matrices).
    """
    ab = ab.detach().cpu()
    nz = ab != 0
    one_each = bool((torch.count_nonzero(nz, 1) == 1).all())
    if bool((torch.count_nonzero(nz, 0) <= 1).all()):  # one pass over the entries from here
        rows, cols = nz.nonzero(as_tuple=True)  # row-major: with one entry per row, in order
        vals = ab[rows, cols]
        ones = bool((vals == 1).all())
        if ones and one_each:
            return ("select", cols)
        return ("scatter", rows, cols, ab.shape[0], None if ones else vals)
    if one_each and bool((ab[nz] == 1).all()):  # a selection that repeats channels
        return ("select", nz.to(torch.uint8).argmax(1))
    return ("dense", ab)


def _combine(op: tuple, seg: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """Apply an analysed map to the n channels (of `block` entries each) along `axis`,
    without a dense matmul or a reordering copy for selections and scatters."""
    dev = seg.device  # decisions live on the CPU; the model may not
    if op[0] == "select":
        return seg.index_select(axis, _expand(op[1].to(dev), block))
    if op[0] == "scatter" and seg.is_floating_point():
        _, rows, cols, k, vals = op
        rows, cols = rows.to(dev), cols.to(dev)
        vals = None if vals is None else vals.to(dev)
        shape = list(seg.shape)
        shape[axis] = k * block
        out = seg.new_zeros(shape)
        picked = seg.index_select(axis, _expand(cols, block))
        if vals is not None:  # scale each picked channel by its weight
            view = [1] * seg.dim()
            view[axis] = -1
            picked = picked * vals.to(seg.dtype).repeat_interleave(block).view(view)
        return out.index_add_(axis, _expand(rows, block), picked)
    ab = op[1] if op[0] == "dense" else _dense(op, seg.shape[axis] // block)
    k, n = ab.shape
    moved = seg.movedim(axis, 0)
    rest = moved.shape[1:]
    flat = moved.reshape(n, -1)
    ab = ab.to(dev)
    res = ab.to(dtype=flat.dtype) @ flat if seg.is_floating_point() else ab @ flat
    return res.reshape(k * block, *rest).movedim(0, axis)


def _dense(op: tuple, n: int) -> torch.Tensor:
    _, rows, cols, k, vals = op
    ab = torch.zeros(k, n)
    ab[rows, cols] = 1.0 if vals is None else vals
    return ab


def _expand(channels: torch.Tensor, block: int) -> torch.Tensor:
    """Channel indices → entry indices when each channel is `block` consecutive entries."""
    if block == 1:
        return channels
    offsets = torch.arange(block, device=channels.device)
    return (channels[:, None] * block + offsets[None, :]).reshape(-1)


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


make_module_callable(__name__)  # `tuneless.reduce` is both this module and its function
