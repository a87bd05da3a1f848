"""Model folding for LLaMA-family causal LMs (METHODS.md §1.4): data-free, no fine-tuning.

MLP intermediate channels and attention heads are clustered by k-means; gate/up
rows and q/k/v head blocks are averaged, down columns and o_proj head blocks
summed. The residual width is not folded.
"""

from __future__ import annotations

import torch
from torch import nn

from tuneless.distributed import my_range, shard, world
from tuneless.errors import TunelessError
from tuneless.llm.activation_stats import collect_stats
from tuneless.llm.adapters import adapter_for
from tuneless.llm.choose import HELD_OUT, choose_schedule, default_candidates
from tuneless.llm.conv1d import as_linear
from tuneless.llm.decide import check_kmeans_dim, fold_decisions
from tuneless.llm.engine import block_params, reduce_llm
from tuneless.llm.plan import FOLD_DEFAULTS, LayerPlan, Shape, resolve_plan
from tuneless.llm.refit import ReferenceTape, refit_consumers, self_generated
from tuneless.modelcheck import check_model
from tuneless.options import check_call
from tuneless.repair import get_repair

CALIB_SKIP = 1  # measured: docs/llm.md "The first position"


def fold_llm(
    model: nn.Module,
    sparsity: float | None = None,
    *,
    schedule=None,
    head_ratio: float | None = None,
    mlp_ratio: float | None = None,
    gqa: str = "kv-groups",
    seed: int = 0,
    n_init: int = 1,
    refine: bool = False,
    cluster: str = "kmeans",
    kmeans_dim: int | str | None = "auto",
    progress: bool | None = None,
    repair: str | None = None,
    example_inputs=None,
    tokenizer=None,
    data: torch.Tensor | None = None,
    calib_samples: int = 16,
    calib_len: int = 128,
    calib_blocks: int = 1,
    calib_skip: int = CALIB_SKIP,
    stats_skip: int | None = None,
    refit_lambda: float = 3.0,
    refit_scope: str = "folded",
    refit_weighting: str = "none",
    refit_target: str = "auto",
    features: str = "auto",
    steps: int | None = None,
) -> nn.Module:
    """Return a folded copy of a Hugging Face decoder LM (families: tuneless.llm.adapters).

    The defaults are the best data-free setting measured (docs/llm.md "Defaults"): MLP
    channels only (heads kept), the schedule chosen by measurement (inner-mlp, unless it
    more than doubles the perplexity on a few held-out sequences the model sampled itself;
    then paper-mlp too, and the better of the two: tuneless.llm.choose), and the
    least-squares repair on 16 sequences of 128 tokens the model samples itself, in two
    steps. `repair="none"` is the paper's folding without repair (paper-mlp schedule).

    sparsity: fraction of transformer-block parameters to remove; the schedule's
      ratios are scaled to meet it. Without it, head_ratio/mlp_ratio (uniform) or the
      paper's fixed ratios (schedule="paper") are used as given.
    schedule: None (default): with a repair and a sparsity, chosen by measurement as above
      (the choice and the measured ratios in `tuneless_report["schedule_choice"]`);
      without a repair "paper-mlp". "paper-mlp": the paper's MLP ratios by relative depth,
      heads kept; "uniform" (the default with head_ratio=/mlp_ratio=; same ratios in every
      layer; head_ratio defaults to the solved MLP ratio, pass head_ratio=0 to fold MLPs
      only), "paper" (heads too), "inner-mlp" (heads kept, one MLP ratio for every layer
      but the first tenth and the last: better than paper-mlp on SmolLM2, far worse on
      Gemma 3, docs/llm.md), "flat-mlp" (heads kept, one MLP ratio in the layers paper-mlp
      folds), or {layer: (head_ratio, mlp_ratio)}.
    n_init, refine: k-means restarts and Hartigan refinement (tuneless.cluster.kmeans);
    cluster: "kmeans" or "ward" (deterministic agglomerative; tuneless.cluster.ward);
    kmeans_dim: "auto" (full MLP features, a 128-wide random projection where clustering
      them in full would be costly: tuneless.llm.decide.projection_width; the streamed
      fold's default too), None (always full) or a projection width.
    example_inputs is accepted for API symmetry with tuneless.fold and not needed.
    repair: "self" (default; data-free: refit o_proj/down_proj by least squares on text the
      uncompressed model samples itself; the model alone is enough), "refit" (the same
      refit on `data`, token ids (batch, seq_len), or on calib_samples windows of the
      calibration text when only tokenizer= is given) or "none" (the paper). See
      tuneless.llm.refit.
    calib_blocks: "self" samples its sequences in this many seeded batches. Under torchrun
      each rank samples only its share of the blocks when there are at least as many
      blocks as ranks (else every rank samples them all); one process with the same
      calib_blocks gives the same model. One block is fastest on one process.
    calib_skip: positions at the start of each calibration sequence that the activation
      statistics and the least squares leave out (1: the first position, which attends
      only to itself and carries the attention-sink outliers; 0 uses all).
    stats_skip: the positions the activation statistics alone leave out (None: calib_skip).
    gqa: "kv-groups" (a kv head and its query heads are one unit) or "query-heads"
      (query heads clustered inside each kv group; kv heads kept).
    features: what k-means clusters. "weights": the raw weight rows and columns (the
      paper); "activations": rows whitened by the calibration inputs' second moment and
      columns scaled by activation RMS (tuneless.llm.activation_stats; needs the repair's
      calibration tokens); "auto" (default): "activations" whenever a repair supplies
      calibration tokens, else "weights".
    steps: reach the plan's widths in this many folds (None: DEFAULT_STEPS, one without a
      repair), each
      repaired before the next clusters (MLP widths evenly spaced between the original and
      the plan's; heads go to the plan's in the first fold). Each fold samples, measures
      and refits on the model it starts from, so the cost grows with steps.
    """
    model = as_linear(check_model(model, "fold"))  # GPT-2: Conv1D as Linear
    adapter = adapter_for(model)  # an unsupported family is named before any work
    repair = DEFAULT_REPAIR if repair is None else "none" if repair == "naive" else repair
    steps = default_steps(repair) if steps is None else steps
    if progress is None:  # follow tuneless.set_progress / TUNELESS_PROGRESS
        from tuneless.progress import progress_enabled

        progress = progress_enabled()
    check_call(fold_llm, {"sparsity": sparsity, "head_ratio": head_ratio, "mlp_ratio": mlp_ratio,
                          "seed": seed, "n_init": n_init, "refine": refine,
                          "kmeans_dim": kmeans_dim, "calib_samples": calib_samples,
                          "calib_blocks": calib_blocks, "steps": steps,
                          "calib_len": calib_len, "refit_lambda": refit_lambda,
                          "calib_skip": calib_skip, "stats_skip": stats_skip}, "fold")
    get_repair(repair, "llm")  # one-line error naming the repairs that apply
    check_kmeans_dim(kmeans_dim)
    if features not in FEATURES:
        raise TunelessError(f"features={features!r}; choose one of {', '.join(FEATURES)}")
    if cluster not in ("kmeans", "ward"):
        raise TunelessError(f"cluster={cluster!r}; choose kmeans or ward")
    shapes = adapter.shapes(model)
    candidates = None
    if (schedule, head_ratio, mlp_ratio) == (None, None, None) and sparsity is not None \
            and repair in ("self", "refit"):  # the default schedule, chosen by measurement
        candidates = default_candidates(shapes, sparsity, gqa)
        schedule = candidates.primary
    plans = _plans(model, sparsity, schedule, head_ratio, mlp_ratio, gqa)  # before sampling
    if all((s.n_q, s.n_kv, s.n_mlp) == (p.n_q, p.n_kv, p.n_mlp) for s, p in zip(shapes, plans)):
        return reduce_llm(model, plans, lambda *_: {}, desc="fold")  # nothing to fold or repair
    once = dict(gqa=gqa, seed=seed, n_init=n_init, refine=refine, cluster=cluster,
                kmeans_dim=kmeans_dim, progress=progress, repair=repair, tokenizer=tokenizer,
                data=data, calib_samples=calib_samples, calib_len=calib_len,
                calib_blocks=calib_blocks, calib_skip=calib_skip,
                stats_skip=calib_skip if stats_skip is None else stats_skip,
                refit_lambda=refit_lambda, refit_scope=refit_scope,
                refit_weighting=refit_weighting, refit_target=refit_target, features=features)
    if candidates is None or candidates.alternative is None:
        return _fold_steps(model, adapter, shapes, plans, steps, once)
    first, held = _first_calibration(model, repair, tokenizer, data, calib_samples, calib_len,
                                    seed, progress, calib_blocks)

    def build(name):
        schedule_plans = _plans(model, sparsity, name, None, None, gqa)
        return _fold_steps(model, adapter, shapes, schedule_plans, steps, once, first)

    return choose_schedule(model, candidates, build, held)


def _fold_steps(model: nn.Module, adapter, shapes: list[Shape], plans: list[LayerPlan],
                steps: int, once: dict, first: torch.Tensor | None = None) -> nn.Module:
    """`model` folded to `plans` in `steps` repaired folds; `first`: the first fold's
    calibration tokens when already drawn (the later folds sample their own)."""
    small = model
    for k, stage in enumerate(step_plans(shapes, plans, steps)):
        small = _fold_once(small, adapter, stage, **once, calib=first if k == 0 else None)
    if steps > 1:  # the report describes the whole fold, not its last step
        before, after = block_params(model), block_params(small)
        small.tuneless_report.update(steps=steps, params_before=before,
                                     achieved_sparsity=1 - after / before)
    return small


def _first_calibration(model: nn.Module, repair: str, tokenizer, data, n: int, length: int,
                      seed: int, progress: bool = False, blocks: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's calibration tokens for the first compression, HELD_OUT rows to judge it
    on: tuneless.llm.choose). The calibration tokens are the ones an unguarded fold draws,
    so a kept primary is that fold exactly. Self-sampled held-out rows are the HELD_OUT
    rows after them (each row is drawn on its own: self_generated), sampled in the same
    batch on one process and never in the repair; on real text they are the first
    calibration rows."""
    if repair == "self" and blocks == 1 and world()[1] == 1:
        ids = self_generated(model, tokenizer, n + HELD_OUT, length, seed, progress)
        return ids[:n], ids[n:]
    first = rank_calibration_ids(model, repair, tokenizer, data, n, length, seed,
                                 show_progress=progress, blocks=blocks)
    if repair == "self":
        return first, self_generated(model, tokenizer, HELD_OUT, length, seed, first_row=n)
    return first, calibration_ids(model, repair, tokenizer, data, n, length, seed)[:HELD_OUT]


def step_plans(shapes: list[Shape], plans: list[LayerPlan], steps: int
               ) -> list[list[LayerPlan]]:
    """The sizes each of `steps` folds reaches, the last one `plans`; a step that would
    change nothing (heads-only plans, whose MLPs do not move) is left out."""
    stages = [stage_plans(shapes, plans, k / steps) for k in range(1, steps)] + [plans]
    before = [LayerPlan(s.n_q, s.n_kv, s.n_mlp) for s in shapes]
    return [p for p, prev in zip(stages, [before, *stages]) if p != prev]


def stage_plans(shapes: list[Shape], plans: list[LayerPlan], t: float) -> list[LayerPlan]:
    """The sizes a fraction t of the way from the original layers to `plans`: MLP widths
    interpolated, heads already at the plan's (a step of fold_llm(steps=...))."""
    return [LayerPlan(p.n_q, p.n_kv, round(s.n_mlp + (p.n_mlp - s.n_mlp) * t))
            for s, p in zip(shapes, plans)]


def _fold_once(model: nn.Module, adapter, plans: list[LayerPlan], *, gqa, seed, n_init,
               refine, cluster, kmeans_dim, progress, repair, tokenizer, data, calib_samples,
               calib_len, calib_blocks, calib_skip, stats_skip, refit_lambda, refit_scope,
               refit_weighting, refit_target, features, calib=None) -> nn.Module:
    """One fold of `model` to `plans` and its repair: calibration tokens (`calib` when
    already drawn), activation statistics, k-means decisions, the reduced copy, the
    least-squares refit."""
    if calib is None:  # under torchrun: statistics and refit on this rank's sequences
        calib = rank_calibration_ids(model, repair, tokenizer, data, calib_samples, calib_len,
                                     seed, show_progress=progress, blocks=calib_blocks)
    if features == "activations" and calib is None:
        raise TunelessError("features='activations' needs calibration tokens: use "
                            "repair='self' (data-free) or repair='refit'")
    tape = None  # the statistics' pass also records the original streams the refit reads
    if calib is not None and features != "weights":
        if repair in ("self", "refit") and ReferenceTape.fits(model, calib):
            tape = ReferenceTape.of(model, calib)
        stats = collect_stats(model, calib, show_progress=progress, skip=stats_skip, tape=tape)
    else:
        stats = None

    def decide(i, groups, shape, plan):
        return fold_decisions(adapter, model, groups, shape, plan, seed=seed + 1000 * i,
                              n_init=n_init, refine=refine, dim=kmeans_dim,
                              stats=None if stats is None else stats[i], method=cluster)

    folded = reduce_llm(model, plans, decide, gqa=gqa, desc="fold", show_progress=progress)
    return repair_reduced(model, folded, repair, calib=calib, refit_lambda=refit_lambda,
                          refit_scope=refit_scope, refit_weighting=refit_weighting,
                          refit_target=refit_target, calib_skip=calib_skip,
                          progress=progress, reference=tape)


def repair_reduced(model: nn.Module, small: nn.Module, repair: str | None, *, tokenizer=None,
                   data=None, calib_samples: int = 16, calib_len: int = 128, seed: int = 0,
                   refit_lambda: float = 3.0, refit_scope: str = "folded",
                   refit_weighting: str = "none", refit_target: str = "auto",
                   calib: torch.Tensor | None = None, calib_blocks: int = 1,
                   calib_skip: int = CALIB_SKIP, progress: bool = False,
                   reference=None) -> nn.Module:
    """The least-squares repair of folding, for any structured reduction of `model` (the
    pruning baselines get it on equal terms): "self", "refit" or None/"none" (nothing).
    `calib`: token ids already drawn for this repair (folding draws them first, for its
    activation statistics); reference: the original's streams on them (ReferenceTape)."""
    repair = "none" if repair in (None, "naive") else repair
    get_repair(repair, "llm")
    if calib is None:
        calib = rank_calibration_ids(model, repair, tokenizer, data, calib_samples, calib_len,
                                     seed, blocks=calib_blocks)
    if calib is not None:
        refit_consumers(model, small, calib, lam=refit_lambda, scope=refit_scope,
                        weighting=refit_weighting, target=refit_target,
                        skip=calib_skip, show_progress=progress, reference=reference)
        small.tuneless_report["repair"] = repair
    return small


FEATURES = ("auto", "weights", "activations")
DEFAULT_REPAIR = "self"  # measured: docs/llm.md "Defaults"
DEFAULT_STEPS = 2  # measured: docs/llm.md "Folding in steps"


def default_steps(repair: str) -> int:
    """DEFAULT_STEPS for the repaired folds; one for repair="none" (the paper's fold: a
    second clustering without a repair in between has nothing new to cluster on)."""
    return DEFAULT_STEPS if repair in ("self", "refit") else 1


def _plans(model, sparsity, schedule, head_ratio, mlp_ratio, gqa, defaults=FOLD_DEFAULTS):
    """checked_plans for a model in memory."""
    adapter = adapter_for(model)
    return checked_plans(adapter, adapter.shapes(model), sparsity, schedule, head_ratio,
                         mlp_ratio, gqa, defaults)


def checked_plans(adapter, shapes, sparsity, schedule, head_ratio, mlp_ratio, gqa,
                  defaults=FOLD_DEFAULTS) -> list[LayerPlan]:
    """Per-layer sizes (tuneless.llm.plan.resolve_plan; `defaults`: the schedules tried in
    order when none is given), the family's head ratio for named schedules, checked by its
    adapter: in memory and streamed alike."""
    plans = resolve_plan(shapes, sparsity=sparsity, schedule=schedule,
                         head_ratio=adapter.head_ratio_for(schedule, head_ratio),
                         mlp_ratio=mlp_ratio, gqa=gqa, defaults=defaults)
    adapter.check_plans(plans, shapes)
    return plans


def calibration_ids(model, repair, tokenizer, data=None, n: int = 64, seq_len: int = 256,
                    seed: int = 0, show_progress: bool = False) -> torch.Tensor | None:
    """Token ids (n, seq_len) for the least-squares repair, or None when there is no repair:
    the model's own samples ("self"), `data`, or windows of the calibration text ("refit")."""
    if repair not in ("self", "refit"):
        return None
    if repair == "refit" and data is not None:
        from tuneless.llm.calibration import check_token_ids

        return check_token_ids(model, data)
    if repair == "self":  # the model's own BOS token starts it: no tokenizer needed
        return self_generated(model, tokenizer, n, seq_len, seed, show_progress)
    if tokenizer is None:
        raise TunelessError("repair='refit' needs tokenizer= (calibration text) or data= token "
                            "ids")
    from tuneless.llm.calibration import calibration_batches

    return torch.cat(calibration_batches(tokenizer, n, seq_len, seed), 0)


def rank_calibration_ids(model, repair, tokenizer, data=None, n: int = 64, seq_len: int = 256,
                         seed: int = 0, show_progress: bool = False,
                         blocks: int = 1) -> torch.Tensor | None:
    """This rank's share of `calibration_ids` (all of them on one process). Self-sampled
    ids in at least as many blocks as ranks are sampled only where they are used."""
    rank, size = world()
    if repair == "self" and size > 1 and blocks >= size:
        return self_generated(model, tokenizer, n, seq_len, seed, show_progress and rank == 0,
                              blocks=blocks, which=my_range(blocks, "calibration blocks"))
    if repair == "self":
        ids = self_generated(model, tokenizer, n, seq_len, seed, show_progress, blocks=blocks)
    else:
        ids = calibration_ids(model, repair, tokenizer, data, n, seq_len, seed, show_progress)
    return None if ids is None else shard(ids)
