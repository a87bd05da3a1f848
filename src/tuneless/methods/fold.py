"""Model folding (Wang et al., ICLR 2025): merge similar channels, no data, no fine-tuning.

Per channel group: cluster the channels on everything attached to them (producer
rows, norm parameters, consumer columns), then merge producers by the cluster mean
and consumers by the cluster sum (M = D⁻¹Uᵀ, U = assignment). The small network
computes the big one with W replaced by its projection C·W. A repair then undoes the
variance collapse that averaging causes: AR in closed form, DIR from synthetic
images, Fold-R from real images (see tuneless.repair, METHODS.md §1).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from tuneless.budget import LLM_RATIO, STREAM_SHARE
from tuneless.errors import TunelessError, UnsupportedModelError
from tuneless.methods.preset import preset
from tuneless.modelcheck import check_model
from tuneless.options import check_dataclass, check_names

FEATURES = ("raw", "block", "gamma")
ALLOCATIONS = ("auto", "uniform", "error", "sensitivity")
# allocation="auto": the measured per-group widths where they were measured to win — per
# budget, the repairs below on networks with convolutions (every benchmark CNN and
# EfficientNet-Lite0; on the fully connected MLP uniform widths won: docs/folding.md
# "Measured widths"). Under a FLOP budget Fold-AR lost ResNet-20 at 50/70% of the FLOPs
# (docs/folding.md "FLOP budgets"), so only Fold-R measures its widths there.
AUTO_SENSITIVITY_REPAIRS = {"params": ("none", "ar", "data", "refit"), "flops": ("data",)}
DIR_STATS = ("match", "reestimate")
_SKIP_NORM = ("running_var", "num_batches_tracked")


@dataclass
class FoldOptions:
    """Everything that decides a fold; written into the report so results are reproducible."""

    sparsity: float | None = None
    channel_ratio: float | None = None
    repair: str = "ar"
    budget: str = "params"  # what `sparsity` removes a fraction of: "params" or "flops"
    allocation: str = "auto"  # "sensitivity" where it wins, else "uniform" (resolved_allocation)
    # a sparsity budget removes stream_share × r of a residual stream's channels and r of
    # every other group's (1.0: the paper's uniform ratio; budget.STREAM_SHARE, measured)
    stream_share: float = STREAM_SHARE
    # Ward + Hartigan on shallow cuts of wide groups, k-means elsewhere (tuneless.cluster
    # "auto"; same accuracy on every benchmark network, docs/folding.md "Shallow cuts")
    cluster: str = "auto"
    features: str = "raw"  # measured best: docs/results/fold-features.md
    # Measured defaults (docs/folding.md, benchmarks/fold_defaults.py, 3 seeds, every
    # benchmark network): cluster and merge the raw conv + BN rather than fusing BN first
    # (Algorithm 1's order, fuse_bn=True), and leave BN running means out of the features.
    fuse_bn: bool = False
    norm_stats: bool = False  # True: cluster on the BN running_mean too
    # rescale each channel behind a ReLU-like activation so its γ/β and its consumer
    # columns have equal norms before clustering (function-preserving; tuneless.rescale)
    balance: bool = False
    seed: int = 0
    n_init: int | str = "auto"
    min_channels: int = 1
    round_to: int = 1  # channel counts rounded to multiples of this (fast kernels); uniform
    # explicit widths instead of a budget: {group id (as `tuneless inspect` prints it):
    # channels kept}; the groups not named stay whole (e.g. latency-aware widths)
    channels: dict | None = None
    max_ratio: float = 0.9  # error/sensitivity allocation: keep at least 10% of every group
    keep_floor: float | None = None  # ... and at least this share of uniform's count
    # (None: KEEP_FLOOR of the allocation)
    # sensitivity allocation: probe inputs whose outputs measure each group's damage (the
    # repair's images when it has them, else pink noise shaped like the example input)
    probe_images: int = 32
    # allocation="auto" measures widths only when that is estimated to cost at most this
    # many FLOPs (tuneless.allocation.probe_flops: an upper bound, every depth of every
    # group, where the allocation measures deeper depths only as its greedy reaches them;
    # ResNet-56 on CIFAR 1.5e12, torchvision efficientnet_b0 / resnet18 at 30% 2.0e12 /
    # 2.7e12, 18–21 / 7 s on one core; resnet50 at 128-px probes 1.9e13), else uniform
    auto_budget: float = 4e12
    num_images: int | None = None  # Fold-R: images of `data` to use (None: all)
    # repair "refit": images of `data` its least squares see; 1,024 beat 256 on every
    # benchmark network measured (docs/folding.md "How many images the refit needs")
    refit_images: int = 1024
    ridge: float = 1e-4  # repair "refit": Tikhonov weight relative to mean diag(XᵀX)
    batch_size: int = 128
    inversion: dict = field(default_factory=dict)  # DeepInversion overrides (dir, self)
    # repair "dir": what it does with its DeepInversion images. "match": every BN's output
    # mean/std set to the uncompressed model's on them, then re-estimated (tuneless.bn_match;
    # measured better and cheaper, docs/folding.md "Fold-DIR with statistics matching");
    # "reestimate": BN re-estimation on them, the paper's Fold-DIR
    dir_stats: str = "match"

    def to_dict(self) -> dict:
        return asdict(self)


def fold(model: nn.Module, *, sparsity: float | None = None, channel_ratio: float | None = None,
         repair: str | None = None, example_inputs=None, data=None, **options) -> nn.Module:
    """Fold `model` to remove `sparsity` of its parameters (of its FLOPs with
    budget="flops"; or `channel_ratio` of every group's channels) and repair it; returns a
    new model, the input is untouched.

    repair: "ar" (closed form, data-free; the default for CNNs with BatchNorm, "none" for
    those without), "dir" (DeepInversion images,
    data-free; BN statistics matched to the original's on them, dir_stats="reestimate" for
    the paper's re-estimation), "data" (BN re-estimation on `data`, a tensor or DataLoader of
    real inputs),
    "refit" (beyond the paper: every layer re-solved by least squares on `data`, see
    tuneless.layer_refit), "self" (the same refit on DeepInversion images of the model:
    data-free, minutes of synthesis; docs/folding.md), "none". Language models go to
    tuneless.llm.fold_llm: the paper's MLP schedule and the data-free least-squares repair
    on the model's own samples ("self") by default; "refit" on data= token ids, "none" =
    the paper (options e.g. schedule=, tokenizer=, features= "auto" | "weights" |
    "activations" for what its k-means clusters).
    Options: budget ("params", the default, or "flops": sparsity is the fraction of the
    FLOPs of one example input removed, and measured widths spend damage per FLOP saved;
    the report then has flops_before/flops_after), allocation ("auto", the default:
    "sensitivity" for repairs "none", "ar", "data" and "refit" on networks with
    convolutions, where it was measured to win (under budget="flops" for "data" only),
    "uniform" otherwise and when measuring would cost more than
    auto_budget FLOPs (4e12 by default: under a minute on one CPU core for torchvision's
    efficientnet_b0 or resnet18; resnet50 exceeds it);
    "sensitivity": per-group widths from the output damage of folding each group alone,
    measured on probe_images inputs — the repair's images, else pink noise, so still no
    data; "uniform": every group loses the same share, the paper's fold and the fast one;
    "error"; docs/folding.md "Measured widths"; with channel_ratio= the measured
    widths spend the parameters that ratio's uniform fold removes), stream_share (residual
    streams lose this share of the other groups' channel ratio under a sparsity budget; 1 =
    the paper's uniform ratio), cluster ("auto": Ward + Hartigan where a group of
    ≥ 256 channels keeps ≥ 60% of them, k-means elsewhere; "kmeans" | "ward" |
    "ward-hartigan" | "kmeans+ward" | "greedy"; docs/folding.md "Shallow cuts"),
    features ("raw" | "block" | "gamma"), fuse_bn, balance (rescale each channel behind a
    ReLU-like activation to equal γ/β and consumer norms first: tuneless.rescale; mixed
    results, docs/folding.md "Balanced channel scales"), seed, n_init, min_channels, round_to
    (channel counts in multiples of it, as for prune), max_ratio,
    keep_floor (measured widths keep at least this share of the uniform count per group;
    None: 0.75 for "sensitivity", 0.5 for "error"),
    num_images, batch_size, inversion (dict of DeepInversion settings), dir_stats,
    refit_images, ridge. channels={group id: count} replaces the budget: those groups keep
    exactly that many channels (ids as `tuneless inspect` prints them), the others stay whole.
    With more than one torch thread the channel groups are clustered side by side (the
    same partitions as on one thread; `cluster_groups`).
    """
    from tuneless.llm import fold_llm  # lazy; LLM dispatch (issue 6)
    from tuneless.llm.adapters import is_hf_causal_lm

    if is_hf_causal_lm(model):  # unsupported families: named, not traced
        if options.pop("budget", "params") != "params":
            from tuneless.budget import LLM_BUDGET

            raise TunelessError(LLM_BUDGET)
        if example_inputs is not None:
            options["example_inputs"] = example_inputs
        if channel_ratio is not None:
            raise TunelessError(LLM_RATIO)
        check_names(options, fold_llm, "fold", suggest=fold)
        return fold_llm(model, sparsity, repair=repair, data=data, **options)  # checks model
    check_model(model, "fold")
    if repair is None:  # Fold-AR repairs BatchNorm; without any, the paper's plain fold
        from tuneless.modelcheck import batchnorms

        repair = "ar" if batchnorms(model) else "none"
        if repair == "none":
            warnings.warn("the model has no BatchNorm, so the default repair (Fold-AR) does "
                          "not apply: folding without a repair (Fold-Naive)", stacklevel=2)
    opts = _options(sparsity, channel_ratio, repair, options)
    return _fold(model, opts, example_inputs, data)


fold.options_class = FoldOptions


def _options(sparsity, channel_ratio, repair, options) -> FoldOptions:
    from tuneless.repair import get_repair

    check_names(options, FoldOptions.__dataclass_fields__, "fold", suggest=fold)
    check_dataclass(FoldOptions, {"repair": repair, **options}, "fold")
    opts = FoldOptions(sparsity=sparsity, channel_ratio=channel_ratio, repair=repair, **options)
    if opts.channels is not None:
        if sparsity is not None or channel_ratio is not None:
            raise TunelessError("give channels= or a budget (sparsity / channel_ratio), not both")
        opts.channels = _channel_counts(opts.channels)
    elif (sparsity is None) == (channel_ratio is None):
        raise TunelessError("give exactly one of sparsity or channel_ratio")
    for name in ("sparsity", "channel_ratio"):
        v = getattr(opts, name)
        if v is not None and not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
            raise TunelessError(f"{name} must be a number in [0, 1), got {v!r}")
    get_repair(opts.repair)
    from tuneless.allocation import check_allocation
    from tuneless.budget import check_budget

    check_budget(opts.budget)
    from tuneless.cluster import CLUSTERERS

    if opts.cluster not in CLUSTERERS:
        raise TunelessError(f"unknown clustering method {opts.cluster!r}; choose one of "
                            f"{', '.join(CLUSTERERS)}")
    if opts.dir_stats not in DIR_STATS:
        raise TunelessError(f"unknown dir_stats {opts.dir_stats!r}; choose one of "
                            f"{', '.join(DIR_STATS)}")
    if opts.features not in FEATURES:
        raise TunelessError(f"unknown features {opts.features!r}; choose one of {FEATURES}")
    if not (isinstance(opts.round_to, int) and opts.round_to >= 1):
        raise TunelessError(f"round_to must be an integer ≥ 1, got {opts.round_to!r}")
    check_allocation(opts.allocation, ALLOCATIONS, round_to=opts.round_to,
                     probe_images=opts.probe_images, keep_floor=opts.keep_floor,
                     max_ratio=opts.max_ratio)
    if opts.channels is not None and (opts.allocation not in ("uniform", "auto")
                                      or opts.round_to != 1):
        raise TunelessError("channels= fixes the widths: it takes neither an allocation "
                            "nor round_to")
    if opts.allocation == "error" and opts.sparsity is None:
        raise TunelessError("allocation='error' needs a sparsity (a global parameter budget)")
    if not (isinstance(opts.refit_images, int) and opts.refit_images >= 2) or opts.ridge < 0:
        raise TunelessError("repair 'refit' needs refit_images ≥ 2 and ridge ≥ 0, got "
                            f"{opts.refit_images!r} and {opts.ridge!r}")
    return opts


def _fold(model: nn.Module, opts: FoldOptions, example_inputs, data) -> nn.Module:
    from tuneless.budget import budget_for_ratio, budget_of, cost_weights, solve
    from tuneless.cluster import cluster, reuse_embeddings
    from tuneless.decisions import Merge
    from tuneless.graph import find_groups
    from tuneless.materialize import materialize_weights, materialized_report
    from tuneless.reduce import check_reduced, reduce
    from tuneless.repair import RepairContext, get_repair, require_batchnorm

    t0 = time.perf_counter()
    rep = get_repair(opts.repair)
    if rep.needs_data and data is None:
        raise TunelessError(f"repair {opts.repair!r} needs data: pass data= (images or a loader)")
    require_batchnorm(model, opts.repair)
    x = _example(model, example_inputs)
    if data is not None:
        from tuneless.data.loader import check_images_fit

        check_images_fit(data, x)
    model = materialize_weights(model, x)  # weight-standardised convs as plain ones
    graph = find_groups(model, x)
    if not graph.reducible:
        raise UnsupportedModelError(f"nothing to fold in {type(model).__name__}: every channel "
                                    "group is fixed (see `tuneless inspect`)")
    weights = cost_weights(model, x, opts.budget)  # None: a parameter budget
    work = copy.deepcopy(model).eval()
    if opts.fuse_bn:
        _fuse_checked(work, graph, x)
    if opts.balance:
        from tuneless.rescale import balance_scales

        balance_scales(work, graph, x)

    feats = _Features(lambda gid: channel_features(work, graph[gid], opts.features,
                                                   opts.norm_stats))
    allocation = "channels" if opts.channels is not None else resolved_allocation(
        model, graph, opts, x)
    if allocation == "error":  # it reads every group's features
        for g in graph.reducible:
            feats[g.id]
    # the allocation clusters each group at several depths, then at its width: one
    # embedding per group (uniform folds need each once, and keep no features around)
    with reuse_embeddings() if allocation in ("sensitivity", "error") else nullcontext():
        if opts.channels is not None or allocation != "uniform":  # widths, then their count
            kept = (_named_widths(graph, opts.channels) if opts.channels is not None
                    else _error_widths(model, graph, feats, opts, weights) if allocation == "error"
                    else _sensitivity_widths(model, work, graph, feats, opts, x,
                                             data if rep.needs_data else None, weights))
            b = budget_of(model, graph, kept, weights)
        else:
            b = (solve(model, graph, opts.sparsity, opts.min_channels, opts.round_to,
                       opts.stream_share, weights)
                 if opts.sparsity is not None
                 else budget_for_ratio(model, graph, opts.channel_ratio, opts.min_channels,
                                       opts.round_to, weights))
        kept = b.kept

        decisions, labels, inertia = {}, {}, {}
        todo = [(g.id, kept[g.id]) for g in graph.reducible if kept[g.id] < g.n]
        found = cluster_groups(
            lambda gid, k: cluster(feats.take(gid), k, method=opts.cluster, seed=opts.seed,
                                   n_init=opts.n_init, blocks=graph[gid].blocks), todo)
    for gid, k in todo:
        c = found[gid]
        decisions[gid], labels[gid], inertia[str(gid)] = Merge(c.labels, k), c.labels, c.inertia
    new = reduce(work, graph, decisions) if decisions else copy.deepcopy(model)
    if decisions:
        check_reduced(new, x, "folded")
    t_fold = time.perf_counter() - t0
    if decisions and rep.apply is not None:
        new = rep.apply(RepairContext(model, work, new, graph, labels, decisions, opts, data, x))
    new.eval()
    new.tuneless_report = {
        "method": f"fold-{opts.repair}" if opts.repair != "data" else "fold-r",
        "requested_sparsity": opts.sparsity, "channel_ratio": b.channel_ratio,
        **b.report(), "physically_smaller": True,
        "kept": {str(k): v for k, v in kept.items()},
        "allocation": allocation,
        "kmeans_inertia": inertia, "options": opts.to_dict(),
        "labels": {str(gid): lab.tolist() for gid, lab in labels.items()},
        "fold_seconds": t_fold, "total_seconds": time.perf_counter() - t0,
        **materialized_report(model),
    }
    return new


class _Features(dict):
    """Each group's clustering features, computed when first read: a 640M-parameter RegNet
    holds gigabytes of them, and a uniform fold needs each only once (`take` hands it over
    and forgets it)."""

    def __init__(self, compute) -> None:
        super().__init__()
        self._compute = compute

    def __missing__(self, gid: int) -> torch.Tensor:
        self[gid] = value = self._compute(gid)
        return value

    def take(self, gid: int) -> torch.Tensor:
        return self.pop(gid) if gid in self else self._compute(gid)


def resolved_allocation(model: nn.Module, graph, opts: FoldOptions, x) -> str:
    """What allocation="auto" means for this fold: "sensitivity" for the repairs and
    networks it was measured to win on (AUTO_SENSITIVITY_REPAIRS, convolutions), with no
    round_to, when its probing fits opts.auto_budget; "uniform" otherwise (with a warning
    when only the cost decided). Other allocations are taken as given."""
    from tuneless.allocation import has_convolution, probe_flops

    if opts.allocation != "auto":
        return opts.allocation
    if not (opts.round_to == 1 and opts.repair in AUTO_SENSITIVITY_REPAIRS[opts.budget]
            and has_convolution(model, graph)):
        return "uniform"
    cost = probe_flops(model, graph, x, opts.probe_images)
    if cost > opts.auto_budget:
        warnings.warn(f"allocation='auto' kept uniform widths: measuring them would take "
                      f"~{cost:.1e} FLOPs (auto_budget={opts.auto_budget:.1e}); pass "
                      "allocation='sensitivity' to measure anyway (usually more accurate)",
                      stacklevel=4)
        return "uniform"
    return "sensitivity"


def _floor(opts: FoldOptions, allocation: str) -> float:
    from tuneless.allocation import KEEP_FLOOR

    return KEEP_FLOOR[allocation] if opts.keep_floor is None else opts.keep_floor


def _error_widths(model: nn.Module, graph, feats: dict, opts: FoldOptions,
                  weights=None) -> dict[int, int]:
    """Per-group widths of the error allocation, each kept at keep_floor × its uniform count."""
    from tuneless.allocation import error_allocation
    from tuneless.budget import solve

    uniform = solve(model, graph, opts.sparsity, opts.min_channels, weights=weights).kept
    floor = {gid: math.ceil(_floor(opts, "error") * k) for gid, k in uniform.items()}
    return error_allocation(model, graph, feats, opts.sparsity, max_ratio=opts.max_ratio,
                            min_channels=opts.min_channels, seed=opts.seed, floor=floor,
                            weights=weights)


def _sensitivity_widths(model: nn.Module, work: nn.Module, graph, feats: dict,
                        opts: FoldOptions, x, data=None, weights=None) -> dict[int, int]:
    """Per-group widths from measured damage: each group folded alone (same clustering, AR
    unless repair="none") and the output on probe inputs compared with the original's (the
    repair's own images where it has them, else pink noise: tuneless.allocation)."""
    from tuneless.allocation import OutputDamage, measured_widths
    from tuneless.cluster import cluster
    from tuneless.decisions import Merge
    from tuneless.reduce import reduce
    from tuneless.repair import _apply_ar

    measure = OutputDamage(work, x, opts.probe_images, opts.seed, data)

    def damage(gid: int, k: int) -> float:
        labels = cluster(feats[gid], k, method=opts.cluster, seed=opts.seed,
                         n_init=opts.n_init, blocks=graph[gid].blocks).labels
        new = reduce(work, graph, {gid: Merge(labels, k)}, share=True)  # a trial: AR
        if opts.repair != "none":  # rescales only the group's own (new) γ; a BN after a
            # ReLU only for Fold-AR itself: the data repairs' widths were better without it
            # (docs/folding.md "A second network nobody here trained")
            _apply_ar(work, new, graph, {gid: labels}, through_relu=opts.repair == "ar")
        return measure(new, graph[gid].modules)

    return measured_widths(model, graph, damage, opts.sparsity, opts.channel_ratio,
                           keep_floor=_floor(opts, "sensitivity"), max_ratio=opts.max_ratio,
                           min_channels=opts.min_channels, stream_share=opts.stream_share,
                           weights=weights, order=lambda gid: measure.start(graph[gid].modules))


def _channel_counts(channels) -> dict[int, int]:
    """{group id: count} from a dict whose keys may be digit strings (JSON from the CLI)."""
    if not isinstance(channels, dict) or not channels:
        raise TunelessError("channels must be a non-empty {group id: channels kept} dict, "
                            f"got {channels!r}")
    out = {}
    for key, val in channels.items():
        if not ((isinstance(key, int) and not isinstance(key, bool))
                or (isinstance(key, str) and key.isdigit())):
            raise TunelessError(f"channels: group id {key!r} is not an integer "
                                "(`tuneless inspect` lists the ids)")
        gid = int(key)
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise TunelessError(f"channels: group {gid} must keep a whole number ≥ 1 of "
                                f"channels, got {val!r}")
        out[gid] = val
    return out


def _named_widths(graph, channels: dict[int, int]) -> dict[int, int]:
    """Every reducible group's kept count: as named in `channels`, else all of it."""
    reducible = {g.id: g for g in graph.reducible}
    for gid, k in channels.items():
        if gid not in reducible:
            why = "is fixed" if any(g.id == gid for g in graph.groups) else "does not exist"
            raise TunelessError(f"channels: group {gid} {why} (`tuneless inspect` lists the "
                                "reducible groups)")
        if k > reducible[gid].n:
            raise TunelessError(f"channels: group {gid} has {reducible[gid].n} channels, "
                                f"cannot keep {k}")
        if k % reducible[gid].blocks:
            raise TunelessError(f"channels: group {gid} is read by a grouped conv in "
                                f"{reducible[gid].blocks} blocks: keep a multiple of that, "
                                f"not {k}")
    return {gid: channels.get(gid, g.n) for gid, g in reducible.items()}


MAX_CLUSTER_WORKERS = 8


def cluster_groups(run, todo: list[tuple[int, int]]) -> dict:
    """{group id: run(group id, k)} for every (group id, k) in `todo`.

    With more than one torch thread the groups are clustered side by side, the threads
    shared out among them (most groups are too small for threads inside one matrix product
    to pay: efficientnet_b0's 40 groups at 30% cluster in 1.1 s on two cores this way
    against 1.2–1.3 s with two threads per product and 1.7 s on one thread). Every
    clusterer seeds its own generator; with one thread per group (as many groups as
    threads, up to MAX_CLUSTER_WORKERS) the partitions are those of a one-thread run. At
    most MAX_CLUSTER_WORKERS groups at once: a wide group's clustering holds n × n
    matrices. While they run, torch's thread count is the per-group share for the whole
    process (restored after)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tuneless.progress import progress

    threads = torch.get_num_threads()
    workers = min(threads, len(todo), MAX_CLUSTER_WORKERS)
    if workers <= 1:
        return {gid: run(gid, k) for gid, k in progress(todo, total=len(todo),
                                                         desc="clustering", unit="group")}
    out = {}
    torch.set_num_threads(max(1, threads // workers))
    try:
        with ThreadPoolExecutor(workers) as pool:
            jobs = {pool.submit(run, gid, k): gid for gid, k in todo}
            for job in progress(as_completed(jobs), total=len(jobs), desc="clustering",
                                unit="group"):
                out[jobs[job]] = job.result()
    finally:
        torch.set_num_threads(threads)
    return out


def _example(model: nn.Module, example_inputs):
    if example_inputs is not None:
        return example_inputs
    from tuneless.modelio import example_input

    return example_input(model)


@torch.no_grad()
def _fuse_checked(work: nn.Module, graph, x) -> None:
    """Fuse BN normalisation into producers, and prove on x that the function is unchanged."""
    from tuneless.repair import fuse_bn_normalisation
    from tuneless.rescale import same_output

    if not isinstance(x, torch.Tensor):
        fuse_bn_normalisation(work, graph)
        return
    before = work(x)
    fuse_bn_normalisation(work, graph)
    if not same_output(before, work(x)):
        raise TunelessError("fusing BatchNorm into the layer before it changed the network's "
                            "output (a conv output used by more than its BN?); use fuse_bn=False")


def channel_features(model: nn.Module, group, mode: str = "raw",
                     norm_stats: bool = True) -> torch.Tensor:
    """(n, d) features to cluster: [producer rows | biases | γ | β | mean | consumer columns].

    mode "raw" concatenates the tensors as they are; "block" scales each tensor's block
    to unit mean row norm, so a 1-value γ counts as much as a 576-value conv row (BN γ is
    O(1), conv weights O(0.01)); "gamma" clusters the map the layer really computes
    after its BN: producer rows scaled by γ (and consumers in block scale).
    norm_stats=False leaves the BN running_mean out (after fusion it holds the fused bias,
    O(1) against O(0.01) weights, and can dominate the distance).
    """
    n = group.n
    blocks, gammas = [], {}
    for s in group.slots:
        if s.kind == "norm" and s.param == "weight" and s.producer is not None:
            gammas[s.producer] = s.channel_rows(model, n).float().reshape(n)
    for s in group.slots:
        if s.kind == "norm" and (s.param in _SKIP_NORM
                                 or (not norm_stats and s.param == "running_mean")):
            continue
        rows = s.channel_rows(model, n).float()
        if mode == "gamma" and s.kind == "producer" and s.module in gammas:
            rows = rows * gammas[s.module].unsqueeze(1)
        blocks.append((s, rows))
    if mode == "raw":
        return torch.cat([b for _, b in blocks], 1)
    out = []
    for s, b in blocks:
        if mode == "gamma" and s.kind == "producer":
            out.append(b)
            continue
        norm = b.pow(2).sum().div(n).sqrt()
        out.append(b / norm if norm > 0 else b)
    if mode == "gamma":  # producer part keeps its joint scale; rescale it as one block
        prod = torch.cat([b for (s, _), b in zip(blocks, out) if s.kind == "producer"] or
                         [torch.zeros(n, 0)], 1)
        pnorm = prod.pow(2).sum().div(n).sqrt()
        out = [b / pnorm if (s.kind == "producer" and pnorm > 0) else b
               for (s, _), b in zip(blocks, out)]
    return torch.cat(out, 1)


def _preset(repair: str):
    name = f"fold_{'r' if repair == 'data' else repair}"
    return preset(fold, name, f"Model folding with repair={repair!r} (see `fold`).", repair=repair)


fold_naive = _preset("none")
fold_ar = _preset("ar")
fold_dir = _preset("dir")
fold_r = _preset("data")
fold_match = _preset("match")
fold_refit = _preset("refit")
fold_self = _preset("self")
