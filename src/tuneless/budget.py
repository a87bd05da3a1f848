"""From "remove 50% of the parameters" (or of the FLOPs) to a channel count per group,
without rewriting.

`param_count` is analytic (shapes only), so allocation loops can call it thousands of
times. A FLOP budget is the same count with each weight tensor weighted by the positions
it is applied at (`flop_weights`: one forward pass of the example input). `solve` finds
the uniform channel ratio (the paper's knob) whose rounded per-group counts remove the
requested fraction, then nudges single groups to land within ±1 point of the request; the
achieved value is reported, never assumed.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from tuneless.errors import TunelessError
from tuneless.graph.groups import GroupGraph
from tuneless.hooks import run_hooked
from tuneless.options import check_value

TOLERANCE = 0.01
BUDGETS = ("params", "flops")  # what a sparsity removes a fraction of
LLM_BUDGET = ("a language model's sparsity is a fraction of its decoder-block parameters; "
              "budget='flops' is for CNNs")
LLM_RATIO = ("language models take sparsity= (or head_ratio= / mlp_ratio=), not "
             "channel_ratio")
Weights = dict[tuple[str, str], float]  # (module, parameter) → cost per element
# Residual streams lose this share of the channel ratio the other groups lose, when a
# sparsity budget is solved. Measured (docs/folding.md "Residual streams"): 0.25 beat the
# uniform 1.0 in 27 of 30 fold cells (ResNet-20, option-A ResNet-20, ResNet-56; Fold-AR and
# Fold-R at 10-80%, 3 seeds) and L1 + BN in 14 of 15; 0 and 0.5 each lost more cells.
STREAM_SHARE = 0.25


@dataclass
class Budget:
    """Per-group channel counts and what they achieve."""

    kept: dict[int, int]
    channel_ratio: float | None  # None: counts chosen per group, not from one ratio
    sparsity: float  # achieved fraction of the budget's measure removed
    params_before: int
    params_after: int
    requested_sparsity: float | None = None
    budget: str = "params"
    flops_before: int | None = None  # budget "flops": FLOPs of the weights, one example
    flops_after: int | None = None

    def report(self) -> dict:
        """A model report's keys: achieved_sparsity of the budget's measure, parameters
        always, FLOPs (of one example) under a FLOP budget."""
        out = {"budget": self.budget, "achieved_sparsity": self.sparsity,
               "params_before": self.params_before, "params_after": self.params_after}
        if self.flops_before is not None:
            out.update(flops_before=self.flops_before, flops_after=self.flops_after)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kept"] = {str(k): v for k, v in self.kept.items()}
        return d


def budget_of(model: nn.Module, graph: GroupGraph, kept: dict[int, int],
              weights: Weights | None = None) -> Budget:
    """What explicit per-group counts achieve (named widths or a measured allocation);
    weights: `flop_weights` for a FLOP budget."""
    return _budget(model, graph, kept, None, None, weights)


def _budget(model, graph, kept, ratio, requested, weights) -> Budget:
    count = param_counter(model, graph)
    before, after = count(None), count(kept)
    if weights is None:
        return Budget(kept, ratio, 1 - after / before, before, after, requested)
    cost = param_counter(model, graph, weights)
    f0, f1 = cost(None), cost(kept)
    return Budget(kept, ratio, 1 - f1 / f0, before, after, requested, "flops", round(f0),
                  round(f1))


def cost_weights(model: nn.Module, example, budget: str) -> Weights | None:
    """What a sparsity of `budget` counts: None for parameters, `flop_weights` for FLOPs."""
    check_budget(budget)
    return None if budget == "params" else flop_weights(model, example)


def check_budget(budget) -> None:
    if budget not in BUDGETS:
        raise TunelessError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)} "
                            "(what a sparsity removes a fraction of)")


def flop_weights(model: nn.Module, example) -> Weights:
    """FLOPs per element of every convolution's and linear layer's weight on one example
    (2 × the positions it is applied at: a multiply-add is 2 FLOPs, as torch's FLOP counter
    counts them); every other parameter costs nothing. Times the weights' element counts,
    this is the model's FLOPs as `tuneless.evaluate.count_flops` measures them, and it
    stays so for any widths, because a weight applied at P positions costs 2·P per element
    whatever its shape."""
    positions: dict[str, float] = {}

    def hook(name):
        def record(mod, inputs, out):
            if isinstance(out, torch.Tensor) and out.dim() >= 2:
                n = out.shape[0]
                if isinstance(mod, nn.modules.conv._ConvNd):
                    positions[name] = positions.get(name, 0) + out[0, 0].numel()
                else:  # Linear: every row of every position (tokens, pixels) is one product
                    positions[name] = positions.get(name, 0) + out.numel() / n / out.shape[-1]
        return record

    run_hooked(model, example, [m.register_forward_hook(hook(name))
                                for name, m in model.named_modules()
                                if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))])
    if not positions:
        raise TunelessError("budget='flops' needs convolutions or linear layers that run on "
                            "the example input; none did")
    return {(name, "weight"): 2.0 * p for name, p in positions.items()}


def param_count(model: nn.Module, graph: GroupGraph, kept: dict[int, int] | None = None) -> int:
    """Parameters the model would have after reducing group id → kept channels."""
    return param_counter(model, graph)(kept)


def param_counter(model: nn.Module, graph: GroupGraph,
                  weights: Weights | None = None) -> ParamCounter:
    """`param_count` for one model and graph, its shapes read once: budget searches call it
    hundreds of times, and walking the modules each time was most of a solve's cost.
    weights: each parameter's cost per element (`flop_weights`; absent keys cost 0);
    None counts parameters."""
    return ParamCounter(model, graph, weights)


class ParamCounter:
    """Parameters (or cost, with weights) of a model at per-group kept counts, from shapes
    read once: called with {group id: kept} for the total; `size` and `saving` serve the
    greedy allocations, which price one group's step at a time."""

    def __init__(self, model: nn.Module, graph: GroupGraph, weights: Weights | None = None):
        self.shapes: dict[tuple[str, str], tuple[int, ...]] = {
            (mod_name, p_name): tuple(p.shape)
            for mod_name, mod in model.named_modules()
            for p_name, p in mod.named_parameters(recurse=False)
            if weights is None or weights.get((mod_name, p_name), 0)}
        self.w = weights or {}
        self.n = {g.id: g.n for g in graph}
        # per parameter: the (group, axis, block) slots shrinking it; per group: its params
        self.by_param: dict[tuple[str, str], list[tuple[int, int, float]]] = defaultdict(list)
        self.touch: dict[int, set[tuple[str, str]]] = defaultdict(set)
        for g in graph:
            for slot in g.slots:
                key = (slot.module, slot.param)
                if key in self.shapes:  # not a buffer (running statistics)
                    # a grouped conv's input axis holds n/groups entries
                    self.by_param[key].append((g.id, slot.axis, slot.block / slot.groups))
                    self.touch[g.id].add(key)
        self.total_before = sum(self.size(k, {}) for k in self.shapes)

    def size(self, key: tuple[str, str], kept: dict[int, int]) -> float:
        """One parameter's cost with the groups in `kept` at those counts."""
        shape = list(self.shapes[key])
        for gid, axis, block in self.by_param.get(key, ()):
            shape[axis] -= round((self.n[gid] - kept.get(gid, self.n[gid])) * block)
        return self.w.get(key, 1) * math.prod(shape)

    def saving(self, gid: int, new_k: int, kept: dict[int, int]) -> float:
        """What taking group `gid` from its count in `kept` to `new_k` saves."""
        trial = {**kept, gid: new_k}
        return sum(self.size(key, kept) - self.size(key, trial) for key in self.touch[gid])

    def __call__(self, kept: dict[int, int] | None = None) -> float:
        kept = {gid: k for gid, k in (kept or {}).items() if gid in self.n}
        for gid, k in kept.items():
            if not 1 <= k <= self.n[gid]:
                raise TunelessError(f"group {gid} has {self.n[gid]} channels; cannot keep {k}")
        changed = {key for gid in kept for key in self.touch[gid]}
        return self.total_before - sum(self.size(k, {}) - self.size(k, kept) for k in changed)


def counts_for_ratio(graph: GroupGraph, channel_ratio: float, min_channels: int = 1,
                     round_to: int = 1) -> dict[int, int]:
    """k = round(n·(1−r)) for every reducible group, clamped to [min_channels, n]."""
    if not 0.0 <= channel_ratio < 1.0:
        raise TunelessError(f"channel_ratio must be in [0, 1), got {channel_ratio}")
    _check_options(min_channels, round_to)
    return _ratio_counts(graph, channel_ratio, min_channels, round_to)


def solve(model: nn.Module, graph: GroupGraph, sparsity: float, min_channels: int = 1,
          round_to: int = 1, stream_share: float = STREAM_SHARE,
          weights: Weights | None = None) -> Budget:
    """Per-group counts removing `sparsity` of all parameters (±1 point), from one ratio r:
    r of every group's channels, stream_share·r of a residual stream's (1: uniform, the
    paper's; 0: streams kept whole). A stream's channels run through every block of its
    stage, so each one removed costs more than an inner channel (docs/folding.md).
    weights (`flop_weights`): `sparsity` of the FLOPs instead."""
    if not 0.0 <= sparsity < 1.0:
        raise TunelessError(f"sparsity must be in [0, 1), got {sparsity}")
    _check_options(min_channels, round_to)
    check_value("stream_share", stream_share, float, "channel budget")
    count = param_counter(model, graph, weights)
    before = count(None)
    what = "parameters" if weights is None else "FLOPs"
    if not graph.reducible:
        raise TunelessError("the model has no reducible channel groups (see `tuneless inspect`)")

    def achieved(kept):
        return 1 - count(kept) / before

    floor = {g.id: g.lowest(min_channels) for g in graph.reducible}
    most = achieved(floor)
    if sparsity > most + TOLERANCE:
        raise TunelessError(
            f"sparsity {sparsity:.2f} is out of reach: removing every reducible channel down to "
            f"min_channels={min_channels} removes only {most:.3f} of the {what}")
    lo, _ = bisect(lambda r: achieved(_ratio_counts(graph, r, min_channels, round_to,
                                                    stream_share)) > sparsity,
                   0.0, 1.0)  # achieved(lo) <= sparsity
    kept = _ratio_counts(graph, lo, min_channels, round_to, stream_share)
    kept = _nudge(graph, kept, achieved, sparsity, min_channels, round_to)
    if abs(achieved(kept) - sparsity) > TOLERANCE and len(graph.reducible) <= _SWAP_MAX_GROUPS:
        kept = _swap(graph, kept, achieved, sparsity, min_channels, round_to)
    after = count(kept)
    if abs(1 - after / before - sparsity) > TOLERANCE:
        warnings.warn(f"achieved sparsity {1 - after / before:.3f} of the {what} for a "
                      f"request of {sparsity:.3f}: the closest the channel counts allow",
                      stacklevel=2)
    return _budget(model, graph, kept, lo, sparsity, weights)


def bisect(reached: Callable[[float], bool], lo: float, hi: float,
           steps: int = 40) -> tuple[float, float]:
    """Shrink [lo, hi] around the threshold of a monotone predicate (False at lo, True at
    hi): the one search behind every "which ratio removes this much" question (CNN channel
    ratios here, LLM schedule scales in tuneless.llm.plan)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        if reached(mid):
            hi = mid
        else:
            lo = mid
    return lo, hi


def budget_for_ratio(model: nn.Module, graph: GroupGraph, channel_ratio: float,
                     min_channels: int = 1, round_to: int = 1,
                     weights: Weights | None = None) -> Budget:
    """The Budget of a uniform channel ratio (no search); weights: its sparsity in FLOPs."""
    kept = counts_for_ratio(graph, channel_ratio, min_channels, round_to)
    b = _budget(model, graph, kept, channel_ratio, None, weights)
    if channel_ratio > 0 and b.params_after >= b.params_before:
        warnings.warn(f"channel_ratio {channel_ratio} removes nothing: min_channels="
                      f"{min_channels} / round_to={round_to} keep every channel", stacklevel=2)
    return b


def _ratio_counts(graph, r, min_channels, round_to, stream_share=1.0):
    return {g.id: _round(g.n * (1 - (stream_share * r if g.stream else r)), g.n,
                         g.lowest(min_channels), g.step(round_to)) for g in graph.reducible}


NUDGE_SHARE = 0.05  # the most of a group's channels the nudge may take beyond the ratio's


def _nudge(graph, kept, achieved, target, min_channels, round_to):
    """Remove round_to channels from groups in turns (largest first, one step per group and
    turn) while that gets closer, each group losing at most NUDGE_SHARE of its channels (one
    step at least): the ratio's rounding is corrected across groups, never by draining one
    whose channels are cheap in the budget's unit (under a FLOP budget with round_to=8 the
    VGG's two 512-wide classifier groups went to 8 channels each before)."""
    kept = dict(kept)
    cur = achieved(kept)
    groups = sorted(graph.reducible, key=lambda g: -g.n)
    step = {g.id: g.step(round_to) for g in groups}
    lowest = {g.id: max(g.lowest(min_channels), kept[g.id] - step[g.id] * max(
        1, math.ceil(NUDGE_SHARE * g.n / step[g.id]))) for g in groups}
    moved = True
    while moved and abs(cur - target) > 1e-4:
        moved = False
        for g in groups:
            k = kept[g.id] - step[g.id]
            if k < lowest[g.id]:
                continue
            trial = {**kept, g.id: k}
            new = achieved(trial)
            if abs(new - target) < abs(cur - target):
                kept, cur, moved = trial, new, True
                if abs(cur - target) <= 1e-4:
                    break
    return kept


def _swap(graph, kept, achieved, target, min_channels, round_to):
    """Small networks, where one channel is several points of the budget: move round_to
    channels between two groups (or add / remove at one) while that gets closer."""
    groups = list(graph.reducible)
    cur = abs(achieved(kept) - target)
    for _ in range(4 * len(groups)):
        best = None
        for a in [None, *groups]:  # a loses a step of channels, b gains one
            for b in [None, *groups]:
                if a is b:
                    continue
                trial = dict(kept)
                if a is not None:
                    trial[a.id] -= a.step(round_to)
                if b is not None:
                    trial[b.id] += b.step(round_to)
                if any(not g.lowest(min_channels) <= trial[g.id] <= g.n
                       for g in (a, b) if g is not None):
                    continue
                err = abs(achieved(trial) - target)
                if err < cur - 1e-12 and (best is None or err < best[0]):
                    best = (err, trial)
        if best is None:
            break
        cur, kept = best
    return kept


_SWAP_MAX_GROUPS = 48  # above this, channels are fine-grained enough for _nudge alone


def _round(x: float, n: int, lowest: int, step: int) -> int:
    k = int(round(x / step)) * step
    return int(min(n, max(k, lowest)))


def _check_options(min_channels: int, round_to: int) -> None:
    check_value("min_channels", min_channels, int, "channel budget")
    check_value("round_to", round_to, int, "channel budget")
