"""Data-free per-group allocation: spend the parameter budget where folding costs least.

The paper folds every group by the same ratio. Groups differ: some have many
near-duplicate channels (cheap to fold), others none. Each group's own k-means
error curve, normalised by the group's total scatter (the error at k = 1), says how
much of its weight structure a cluster count loses. A greedy loop then repeatedly
takes the step (one group to its next smaller count) with the least normalised error
added per fraction of the group's parameters saved (errors measured at a few counts and
interpolated to every count, so the budget is met to a channel), until the global budget
is met. No data is used.

`sensitivity_allocation` is the same greedy loop on *measured* curves: how far the
network's output moves when one group alone is folded to each count (on probe inputs,
pink noise by default: still no data), per parameter saved.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn

from tuneless.budget import STREAM_SHARE, TOLERANCE, ParamCounter
from tuneless.errors import TunelessError
from tuneless.modes import evaluating


def count_levels(n: int, max_ratio: float, min_channels: int, step: float = 0.04) -> list[int]:
    """Candidate cluster counts, descending from n: every count for small groups, else 4% steps."""
    lowest = max(min_channels, 1, int(math.ceil(n * (1 - max_ratio))))
    if n <= 64:
        return list(range(n, lowest - 1, -1))
    levels = {n, lowest}
    r = step
    while r < max_ratio:
        levels.add(max(lowest, int(round(n * (1 - r)))))
        r += step
    return sorted(levels, reverse=True)


def error_curve(feats: torch.Tensor, levels: list[int], seed: int = 0,
                n_init: int = 1, blocks: int = 1) -> list[float]:
    """k-means objective at each level, divided by the group's total scatter."""
    from tuneless.cluster import cluster

    x = feats.double()
    total = float(((x - x.mean(0)) ** 2).sum())
    if total <= 0:
        return [0.0 for _ in levels]
    out = []
    for k in levels:
        kw = {"seed": seed, "n_init": n_init, "refine": False} if 1 < k < len(x) else {}
        out.append(cluster(feats, k, blocks=blocks, **kw).inertia / total
                   if k < len(x) else 0.0)
    return out


def _block_levels(g, coarse: list[int]) -> tuple[list[int], list[int]]:
    """(measured counts, every count) of a group: whole multiples of its grouped-conv
    blocks (all counts for ordinary groups), descending from g.n."""
    b = g.blocks
    coarse = sorted({max(b, min(g.n, round(c / b) * b)) for c in coarse}, reverse=True)
    return coarse, list(range(coarse[0], coarse[-1] - 1, -b))


def error_allocation(model: nn.Module, graph, feats: dict[int, torch.Tensor], sparsity: float,
                     *, max_ratio: float = 0.9, min_channels: int = 1, seed: int = 0,
                     n_init: int = 1, floor: dict[int, int] | None = None,
                     weights: dict | None = None) -> dict[int, int]:
    """Per-group cluster counts removing `sparsity` of the parameters, chosen greedily by
    normalised k-means error added per parameter saved.

    floor: optional per-group minimum counts (e.g. a share of what uniform folding keeps).
    weights: budget.flop_weights to remove `sparsity` of the FLOPs instead.
    """
    if not 0.0 <= sparsity < 1.0:
        raise TunelessError(f"sparsity must be in [0, 1), got {sparsity}")
    groups = [g for g in graph.reducible if g.id in feats]
    counter = ParamCounter(model, graph, weights)
    full = {g.id: g.n for g in groups}
    levels, curves, size = {}, {}, {}
    for g in groups:
        lowest = max(g.lowest(min_channels), (floor or {}).get(g.id, 1))
        coarse, levels[g.id] = _block_levels(g, count_levels(g.n, max_ratio, lowest))
        errs = error_curve(feats[g.id], coarse, seed, n_init, g.blocks)
        curves[g.id] = _interpolate(coarse, errs, levels[g.id])
        size[g.id] = max(1, _group_params(counter, g.id))
    # normalised error added per normalised parameter saved: both relative to the group
    return _greedy(counter, levels, curves, dict(full), sparsity, max_ratio, size)


def _greedy(counter: ParamCounter, levels: dict, curves: dict, kept: dict[int, int],
            sparsity: float, max_ratio: float, weight: dict | None = None,
            extend=None) -> dict[int, int]:
    """Step the group whose next count adds the least curve per parameter saved (× its
    weight) until `sparsity` of the parameters is gone; levels/curves: per group, counts
    descending from its current one and the curve at each. Ties go to the group first in
    `levels`. A step changes the price of the next step only for groups that share a
    tensor with the stepped one, so only theirs is recomputed (EfficientNet-B0's 40 groups
    take thousands of one-channel steps). extend(gid) -> bool: lengthen the group's lists
    in place when its next step lies past them (curves measured only as far as the greedy
    looks); False when there is nothing more."""
    pos = {gid: 0 for gid in levels}
    target = counter.total_before * (1 - sparsity)
    current = counter(kept)
    sharing = _sharing(counter, levels)

    def score(gid: int) -> float:
        i = pos[gid]
        if i + 1 >= len(levels[gid]) and not (extend is not None and extend(gid)):
            return math.inf
        saved = counter.saving(gid, levels[gid][i + 1], kept)
        if saved <= 0:
            return math.inf
        return (curves[gid][i + 1] - curves[gid][i]) / (saved / (weight[gid] if weight else 1))

    scores = {gid: score(gid) for gid in levels}
    while current > target:
        best, best_score = None, math.inf
        for gid, sc in scores.items():
            if sc < best_score:
                best, best_score = gid, sc
        if best is None:
            reached = 1 - current / counter.total_before
            if sparsity - reached > TOLERANCE:
                raise TunelessError(f"sparsity {sparsity:.2f} is out of reach with "
                                    f"max_ratio={max_ratio} per group")
            warnings.warn(f"achieved sparsity {reached:.3f} for a request of {sparsity:.3f}: "
                          "the closest the floors and channel steps allow", stacklevel=3)
            return kept
        current -= counter.saving(best, levels[best][pos[best] + 1], kept)
        pos[best] += 1
        kept[best] = levels[best][pos[best]]
        for gid in sharing[best]:
            scores[gid] = score(gid)
    return _refund(counter, levels, curves, kept, pos, target)


def _sharing(counter: ParamCounter, levels: dict) -> dict[int, set[int]]:
    """Per group in `levels`: the groups in `levels` (itself included) that shrink one of
    its tensors, whose step prices its steps change."""
    by_key: dict = {}
    for gid in levels:
        for key in counter.touch[gid]:
            by_key.setdefault(key, set()).add(gid)
    return {gid: {o for key in counter.touch[gid] for o in by_key[key]} for gid in levels}


def _refund(counter: ParamCounter, levels: dict, curves: dict, kept: dict[int, int],
            pos: dict[int, int], target: float) -> dict[int, int]:
    """Undo steps the budget no longer needs: the last step can overshoot by a whole
    channel of a wide residual stream (ResNet-20 at 10%: 10.9% removed for 10%), so give
    channels back, most curve recovered first, while the budget still holds."""
    while True:
        best, best_gain = None, -math.inf
        for gid, i in pos.items():
            if i == 0:
                continue
            trial = {**kept, gid: levels[gid][i - 1]}
            if counter(trial) > target:
                continue
            gain = curves[gid][i] - curves[gid][i - 1]
            if gain > best_gain:
                best, best_gain = gid, gain
        if best is None:
            return kept
        pos[best] -= 1
        kept[best] = levels[best][pos[best]]


def _group_params(counter: ParamCounter, gid: int) -> int:
    """Parameters (or FLOPs) in the tensors a group touches (its share of the model)."""
    return sum(counter.size(key, {}) for key in counter.touch[gid])


def _interpolate(coarse: list[int], errs: list[float], fine: list[int]) -> list[float]:
    """Linear interpolation of the error curve from the measured counts to every count."""
    xs = torch.tensor(coarse[::-1], dtype=torch.float64)
    ys = torch.tensor(errs[::-1], dtype=torch.float64)
    out = []
    for k in fine:
        j = int(torch.searchsorted(xs, torch.tensor(float(k), dtype=torch.float64)))
        if j < len(xs) and xs[j] == k:
            out.append(float(ys[j]))
        else:
            x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
            out.append(float(y0 + (y1 - y0) * (k - x0) / (x1 - x0)))
    return out


# keep_floor=None: each allocation's measured floor (share of the uniform width every group
# keeps), the same for fold and prune (docs/folding.md "Measured widths")
KEEP_FLOOR = {"sensitivity": 0.75, "error": 0.5}

# shares of a group's channels removed at which each group's damage is measured; the 5%
# point gives the curve's first slope, where small budgets are decided (ResNet-20 at 10%,
# 3 seeds: Fold-Naive 83.12 -> 83.40, Fold-AR 84.22 -> 84.31; at 30% 77.06 vs 77.02)
SENSITIVITY_LEVELS = (0.05, 0.15, 0.3, 0.5, 0.7, 0.9)


def check_allocation(allocation: str, choices: tuple[str, ...], *, round_to: int,
                     probe_images: int, keep_floor: float | None, max_ratio: float) -> None:
    """The allocation options fold and prune share, checked alike (one-line errors)."""
    if allocation not in choices:
        raise TunelessError(f"unknown allocation {allocation!r}; choose one of "
                            f"{', '.join(choices)}")
    if allocation not in ("uniform", "auto") and round_to != 1:
        raise TunelessError("round_to applies to allocation='uniform' only")
    if not (isinstance(probe_images, int) and probe_images >= 2):
        raise TunelessError(f"probe_images must be an integer ≥ 2, got {probe_images!r}")
    if not 0.0 < max_ratio < 1.0:
        raise TunelessError(f"max_ratio must be in (0, 1), got {max_ratio}")
    if keep_floor is not None and not 0.0 <= keep_floor <= 1.0:
        raise TunelessError(f"keep_floor must be in [0, 1], got {keep_floor}")


def has_convolution(model: nn.Module, graph) -> bool:
    """Whether any reducible group's channels belong to a convolution: the networks on
    which measured widths beat uniform ones (allocation="auto")."""
    convs = {name for name, m in model.named_modules()
             if isinstance(m, nn.modules.conv._ConvNd)}
    return any(s.module in convs for g in graph.reducible for s in g.slots)


def probe_flops(model: nn.Module, graph, x, probe_images: int) -> int:
    """Estimated FLOPs of a sensitivity allocation: one forward pass over the probes per
    group and depth (at most len(SENSITIVITY_LEVELS) depths; the probes as measured)."""
    from tuneless.evaluate import count_flops

    one = small_probes(model, probe_inputs(x, 1, 0))
    return (count_flops(model, one[:1]) * probe_images * len(SENSITIVITY_LEVELS)
            * len(graph.reducible))


PROBE_SIDE = 128  # image probes larger than this are measured at this size where the model
# allows (EfficientNet-Lite0 at 10%, 32 pink probes: 224 px 46.5% top-1 agreement, 128 px
# 44.5%, 64 px 36.1% — no better than uniform widths; docs/folding.md "Sensitivity allocation")


def probe_inputs(x, n: int, seed: int, data=None) -> torch.Tensor:
    """The inputs a sensitivity allocation measures on: the first n of `data` (images or a
    loader) when given, else n noise inputs shaped like one example input — pink noise
    (amplitude ∝ 1/f, the spectrum of natural images) with unit variance per image and
    channel for image batches (N, C, H, W), standard-normal noise for anything else. On
    ResNet-20 white noise ranked the groups worse than a uniform fold; pink noise came close
    to real images (docs/folding.md "Sensitivity allocation")."""
    if data is not None:
        from tuneless.data.loader import image_batches

        return torch.cat(list(image_batches(data, n, n)))
    t = x[0] if isinstance(x, (tuple, list)) else x
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TunelessError("allocation='sensitivity' probes with noise and needs a floating "
                            "point example input")
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((n, *t.shape[1:]), generator=g, dtype=torch.float64)
    if w.dim() == 4 and min(w.shape[-2:]) >= 4:
        h, wd = w.shape[-2:]
        f = (torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1) ** 2
             + torch.fft.rfftfreq(wd, dtype=torch.float64).view(1, -1) ** 2).sqrt()
        f[0, 0] = 1.0 / max(h, wd)  # each image's mean: the weight of the lowest frequency
        w = torch.fft.irfft2(torch.fft.rfft2(w) / f, s=(h, wd))
        w = (w - w.mean((2, 3), keepdim=True)) / w.std((2, 3), keepdim=True)
    return w.to(t.dtype)


def small_probes(model: nn.Module, probe: torch.Tensor, side: int = PROBE_SIDE) -> torch.Tensor:
    """Image probes larger than side × side, resized to it (area-averaged) when the model
    runs on that size: every probe is one forward pass per group and depth, and on
    ImageNet-sized inputs those passes are most of the allocation's cost."""
    if probe.dim() != 4 or max(probe.shape[-2:]) <= side:
        return probe
    h, w = probe.shape[-2:]
    size = (max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w))))
    small = torch.nn.functional.interpolate(probe, size=size, mode="area")
    try:
        _eval_forward(model, small[:1])
    except Exception:  # noqa: BLE001 — e.g. a flatten sized for the full input: keep it
        return probe
    return small


def channels_last_probes(model: nn.Module, probe: torch.Tensor) -> torch.Tensor:
    """Image probes in channels-last memory format where the model computes the same on
    them (checked on two probes): CPU convolutions run 14–34% faster on such inputs
    (torchvision resnet18 / mobilenet_v2 / efficientnet_b0 at 128 px, ResNet-20 / -56 and
    the VGG at 32 px, one thread), and the probes' passes are most of an allocation. A
    model that cannot take them (a `.view` of a feature map) gets the probes as they are."""
    if probe.dim() != 4 or probe.shape[1] == 1:
        return probe
    fast = probe.contiguous(memory_format=torch.channels_last)
    try:
        got = _output_tensor(_eval_forward(model, fast[:2])).double()
    except Exception:  # noqa: BLE001 — any failure on the other layout: keep the probes
        return probe
    want = _output_tensor(_eval_forward(model, probe[:2])).double()
    same = got.shape == want.shape and (want.numel() == 0 or float(
        (got - want).abs().max()) <= 1e-4 * float(want.abs().max()) + 1e-6)
    return fast if same else probe


def _eval_forward(model: nn.Module, x: torch.Tensor):
    """model(x) in eval mode without gradients; every module's own mode is restored
    (the model may be the user's own)."""
    with torch.no_grad(), evaluating(model):
        return model(x)


class OutputDamage:
    """The damage measure of a sensitivity allocation: OutputDamage(reference, x, n, seed,
    data)(model, changed=None) -> ‖model(probe) − reference(probe)‖² / the reference
    outputs' scatter, on `probe_inputs(x, n, seed, data)` shrunk by `small_probes`.
    changed: the names of the only modules in which `model` differs from the reference;
    then only the graph from the first of them runs (tuneless.suffix), and trials measured
    in the order of `start(changed)` share one walk of the reference's prefix. The traced
    graph can hold sizes as constants that the trial's modules no longer have
    (torchvision's LayerNorm2d passes its normalized_shape to layer_norm): each group's
    first trial is checked against the trial's own forward on two probes, and a group whose
    shortened run fails or differs is measured by full forward passes."""

    def __init__(self, reference: nn.Module, x, n: int, seed: int, data=None) -> None:
        self.reference = reference
        self.probe = channels_last_probes(
            reference, small_probes(reference, probe_inputs(x, n, seed, data)))
        self.ref = _output_tensor(_eval_forward(reference, self.probe)).double()
        self.scale = float((self.ref - self.ref.mean(0)).pow(2).sum()) or 1.0
        self._runner: list = []
        self._trusted: dict[frozenset, bool] = {}

    def runner(self):
        """The suffix runner over the reference's traced graph, None if it does not trace."""
        from tuneless.suffix import SuffixRunner

        if not self._runner:
            try:
                self._runner.append(SuffixRunner(self.reference, self.probe))
            except Exception:  # noqa: BLE001 — no traced graph: every trial runs whole
                self._runner.append(None)
        return self._runner[0]

    def start(self, changed: set[str]) -> int:
        """Where a trial changing these modules starts running (0 without a traced graph)."""
        runner = self.runner()
        return 0 if runner is None else runner.start_of(changed)

    def _shortened(self, model: nn.Module, changed: set[str]) -> torch.Tensor | None:
        key = frozenset(changed)
        if self._trusted.get(key) is False or self.runner() is None:
            return None
        try:
            out = _output_tensor(self.runner().run(model, changed))
        except Exception:  # noqa: BLE001 — any failure of the interpretation: run it whole
            self._trusted[key] = False
            return None
        if key not in self._trusted:
            own = _output_tensor(_eval_forward(model, self.probe[:2]))
            self._trusted[key] = own.shape == out[:2].shape and bool(
                torch.allclose(out[:2], own, rtol=1e-4, atol=1e-5))
        return out if self._trusted[key] else None

    def __call__(self, model: nn.Module, changed: set[str] | None = None) -> float:
        from tuneless.reduce import missed_coupling

        out = self._shortened(model, changed) if changed is not None else None
        if out is None:
            try:
                out = _output_tensor(_eval_forward(model, self.probe))
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise missed_coupling(model, "trial", exc) from exc
        return float((out.double() - self.ref).pow(2).sum()) / self.scale


def _output_tensor(out) -> torch.Tensor:
    """The first tensor of a model's output (tuple, list, dict or a tensor), one row each."""
    if isinstance(out, dict):
        out = next(iter(out.values()))
    while isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TunelessError("allocation='sensitivity' needs a model whose output is a tensor")
    return out.reshape(out.shape[0], -1)


def measured_widths(model: nn.Module, graph, damage, sparsity: float | None,
                    channel_ratio: float | None = None, *, keep_floor: float = 0.5,
                    max_ratio: float = 0.9, min_channels: int = 1,
                    stream_share: float = STREAM_SHARE,
                    weights: dict | None = None, order=None) -> dict[int, int]:
    """sensitivity_allocation under a sparsity budget or the parameters a uniform channel
    ratio removes, every group kept at keep_floor × its count in that uniform plan (a
    bound on how far one-group-at-a-time measurements are trusted). weights
    (budget.flop_weights): the budget and the damage per unit saved are in FLOPs; order:
    as for sensitivity_allocation."""
    from tuneless.budget import budget_for_ratio, solve

    if sparsity is not None:
        uniform = solve(model, graph, sparsity, min_channels, stream_share=stream_share,
                        weights=weights).kept
    else:  # channel_ratio: the parameters the paper's uniform ratio removes, reallocated
        b = budget_for_ratio(model, graph, channel_ratio, min_channels, weights=weights)
        sparsity, uniform = b.sparsity, b.kept
    floor = {gid: math.ceil(keep_floor * k) for gid, k in uniform.items()}
    return sensitivity_allocation(model, graph, damage, sparsity, max_ratio=max_ratio,
                                  min_channels=min_channels, floor=floor, weights=weights,
                                  order=order)


def sensitivity_allocation(model: nn.Module, graph, damage, sparsity: float, *,
                           max_ratio: float = 0.9, min_channels: int = 1,
                           floor: dict[int, int] | None = None,
                           shares: tuple[float, ...] = SENSITIVITY_LEVELS,
                           weights: dict | None = None, order=None) -> dict[int, int]:
    """Per-group counts removing `sparsity` of the parameters (of the FLOPs with
    weights=budget.flop_weights), chosen greedily by the measured output damage added per
    parameter (FLOP) saved.

    damage(gid, k) -> float: how far the output moves with group gid alone folded to k
    channels (additive across groups to first order). It is measured at the counts that
    remove `shares` of each group (capped by max_ratio and floor) and interpolated.
    order(gid) -> sort key: the groups are measured in this order (e.g. OutputDamage.start,
    so that trials share one walk of the unchanged prefix); the result does not depend on it.
    """
    if not 0.0 <= sparsity < 1.0:
        raise TunelessError(f"sparsity must be in [0, 1), got {sparsity}")
    counter = ParamCounter(model, graph, weights)
    groups = list(graph.reducible)
    curves = _LazyCurves(damage)
    for g in sorted(groups, key=lambda g: order(g.id)) if order else groups:
        lowest = max((floor or {}).get(g.id, 1), int(math.ceil(g.n * (1 - max_ratio))))
        # whole blocks, rounded down: a floor rounded up would often be the uniform width
        lowest = max(g.lowest(min_channels), lowest // g.blocks * g.blocks)
        if lowest < g.n:  # every group's first depth now, in measuring order
            curves.add(g.id, *_block_levels(g, [g.n, lowest, *(
                max(lowest, round(g.n * (1 - s))) for s in shares)]))
    while True:  # the deeper depths only where the greedy looks: the same widths
        # the greedy breaks ties by group order: the graph's, whatever the measuring order
        ids = [g.id for g in groups if g.id in curves.fine]
        try:  # the curves' own lists: a deeper depth lengthens them in place
            return _greedy(counter, {gid: curves.fine[gid] for gid in ids},
                           {gid: curves.values[gid] for gid in ids},
                           {g.id: g.n for g in groups}, sparsity, max_ratio,
                           extend=curves.extend)
        except _Dropped:  # a deeper trial of a group did not run: again without it
            continue


class _Dropped(Exception):
    """A group's deeper trial did not run (MissedCoupling): it leaves the allocation."""


class _LazyCurves:
    """Measured damage curves of a sensitivity allocation, each measured depth by depth as
    the greedy reaches it: most groups stop long before their deepest depth, and a depth
    the greedy never looks past cannot change its choices (the curves are linear between
    measured depths, each step priced by its own segment). Values are those of measuring
    every depth: the same monotone curve, interpolated between the same points
    (docs/folding.md "Measured only as deep as needed")."""

    def __init__(self, damage) -> None:
        self.damage = damage
        self.coarse: dict[int, list[int]] = {}
        self.errs: dict[int, list[float]] = {}
        self.fine: dict[int, list[int]] = {}  # every count down to the deepest measured one
        self.values: dict[int, list[float]] = {}
        self.levels: dict[int, list[int]] = {}  # every count down to the group's lowest

    def add(self, gid: int, coarse: list[int], fine: list[int]) -> None:
        """A group measured at the counts `coarse` (descending from its width) and priced
        at every count of `fine`; its first depth is measured now."""
        self.coarse[gid], self.levels[gid], self.errs[gid] = coarse, fine, [0.0]
        self.fine[gid], self.values[gid] = [coarse[0]], [0.0]
        self.deeper(gid)  # (coarse has a count below the width: the group's lowest)

    def deeper(self, gid: int) -> bool:
        """Measure the group's next depth; False when it has none. A group whose trial
        does not run leaves (it stays whole, as when its first depth fails)."""
        from tuneless.reduce import MissedCoupling

        coarse, errs = self.coarse[gid], self.errs[gid]
        if len(errs) >= len(coarse):
            return False
        try:
            err = max(0.0, self.damage(gid, coarse[len(errs)]))
        except MissedCoupling:
            for table in (self.coarse, self.errs, self.fine, self.values, self.levels):
                del table[gid]
            return False
        errs.append(max(err, errs[-1]))  # folding deeper never helps: keep it monotone
        known = coarse[:len(errs)]
        fine = [k for k in self.levels[gid] if k >= known[-1]]
        # in place (the greedy holds these lists); the counts already there keep their values
        self.values[gid][:] = _interpolate(known, errs, fine)
        self.fine[gid][:] = fine
        return True

    def extend(self, gid: int) -> bool:
        """_greedy's extend: the group's next depth measured; a group whose trial did not
        run makes the greedy start again without it."""
        if self.deeper(gid):
            return True
        if gid not in self.fine:
            raise _Dropped
        return False
