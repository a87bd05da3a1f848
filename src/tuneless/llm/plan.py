"""Per-layer sizes from a schedule and a parameter budget over the transformer blocks.

A plan says, for every decoder layer, how many attention units and MLP channels
stay. "sparsity" is the fraction of transformer-block parameters removed
(embeddings, final norm and lm_head excluded — as in the LLM-pruning papers).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneless.budget import bisect
from tuneless.errors import TunelessError

GQA_MODES = ("kv-groups", "query-heads")
SCHEDULES = ("inner-mlp", "flat-mlp", "paper-mlp", "uniform", "paper")


class BudgetOutOfReach(TunelessError):
    """A schedule cannot remove the requested fraction of the block parameters."""


@dataclass(frozen=True)
class Shape:
    """The sizes of one decoder layer and what counts towards its parameter total."""

    hidden: int
    head_dim: int
    n_q: int
    n_kv: int
    n_mlp: int
    attn_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    n_norm: int = 2
    mlp_mats: int = 3  # hidden × n_mlp matrices in the MLP: gate, up, down; 2 without a gate

    @property
    def group(self) -> int:
        return self.n_q // self.n_kv

    def params(
        self, n_q: int | None = None, n_kv: int | None = None, n_mlp: int | None = None
    ) -> int:
        q = self.n_q if n_q is None else n_q
        kv = self.n_kv if n_kv is None else n_kv
        f = self.n_mlp if n_mlp is None else n_mlp
        hd, h = self.head_dim, self.hidden
        attn = (q + 2 * kv) * hd * h + q * hd * h
        attn += (q + 2 * kv) * hd * self.attn_bias + h * self.o_bias
        mlp = self.mlp_mats * h * f + ((self.mlp_mats - 1) * f + h) * self.mlp_bias
        return attn + mlp + self.n_norm * h


@dataclass(frozen=True)
class LayerPlan:
    """Kept sizes of one layer: query heads, kv heads, MLP channels."""

    n_q: int
    n_kv: int
    n_mlp: int


def keep_heads(shape: Shape, head_ratio: float, gqa: str) -> tuple[int, int]:
    """(query heads, kv heads) kept when a fraction head_ratio of heads is folded away."""
    if gqa == "kv-groups" or shape.group == 1:
        kv = max(1, round(shape.n_kv * (1 - head_ratio)))
        return kv * shape.group, kv
    per_group = max(1, round(shape.group * (1 - head_ratio)))
    return per_group * shape.n_kv, shape.n_kv


def layer_plan(shape: Shape, head_ratio: float, mlp_ratio: float, gqa: str) -> LayerPlan:
    for name, r in (("head_ratio", head_ratio), ("mlp_ratio", mlp_ratio)):
        if not 0.0 <= r < 1.0:
            raise TunelessError(f"{name}={r} must be in [0, 1)")
    n_q, n_kv = keep_heads(shape, head_ratio, gqa)
    return LayerPlan(n_q, n_kv, max(1, round(shape.n_mlp * (1 - mlp_ratio))))


def removed_fraction(shapes: list[Shape], plans: list[LayerPlan]) -> float:
    total = sum(s.params() for s in shapes)
    kept = sum(s.params(p.n_q, p.n_kv, p.n_mlp) for s, p in zip(shapes, plans))
    return 1.0 - kept / total


def paper_ratios(layer: int, n_layers: int) -> tuple[float, float]:
    """(head, MLP) ratios of the paper's LLaMA-7B schedule, mapped by relative depth.

    LLaMA-7B (32 blocks): blocks 22–29 fold 20% heads / 50% MLP, 11–21 fold 10% / 40%,
    the first 11 and the last 2 are untouched (≈20% of block parameters).
    """
    pos = (layer + 0.5) * 32 / n_layers  # centre of the layer on the 32-block axis
    if 22 <= pos < 30:
        return 0.2, 0.5
    if 11 <= pos < 22:
        return 0.1, 0.4
    return 0.0, 0.0


# inner-mlp leaves this share of the first layers (at least one) and the last layer whole
INNER_SKIP = 0.1


def inner_layers(n_layers: int) -> range:
    """The layers schedule "inner-mlp" folds: all but the first round(INNER_SKIP · n) (at
    least one; the first layers are where a fold hurts most, measured: docs/llm.md) and the last."""
    first = max(1, round(INNER_SKIP * n_layers))
    return range(min(first, n_layers - 1), n_layers - 1)


def _ratios(
    schedule, n_layers: int, head_ratio, mlp_ratio, scale: float
) -> list[tuple[float, float]]:
    if schedule == "uniform":
        return [(min(head_ratio * scale, 0.95), min(mlp_ratio * scale, 0.95))] * n_layers
    if schedule == "inner-mlp":  # heads kept; one MLP ratio for the inner layers
        inner = inner_layers(n_layers)
        return [(0.0, min(scale, 0.95) if i in inner else 0.0) for i in range(n_layers)]
    if schedule == "flat-mlp":  # heads kept; one MLP ratio in the layers paper-mlp folds
        return [(0.0, min(scale, 0.95) if paper_ratios(i, n_layers)[1] > 0 else 0.0)
                for i in range(n_layers)]
    if schedule in ("paper", "paper-mlp"):  # paper-mlp: the paper's MLP ratios, heads kept
        keep_heads = 0.0 if schedule == "paper-mlp" else 1.0
        return [
            (min(h * scale * keep_heads, 0.95), min(m * scale, 0.95))
            for h, m in (paper_ratios(i, n_layers) for i in range(n_layers))
        ]
    raise TunelessError(
        f"unknown schedule {schedule!r}; use {', '.join(map(repr, SCHEDULES))} or a dict")


def _from_dict(schedule: dict, n_layers: int) -> list[tuple[float, float]]:
    out = [(0.0, 0.0)] * n_layers
    for key, val in schedule.items():
        i = int(key)
        if not 0 <= i < n_layers:
            raise TunelessError(f"schedule names layer {key} but the model has {n_layers} layers")
        if isinstance(val, dict):
            unknown = set(val) - {"heads", "mlp"}
            if unknown:
                raise TunelessError(
                    f"schedule entry for layer {key} has unknown keys {sorted(unknown)}"
                )
            out[i] = (float(val.get("heads", 0.0)), float(val.get("mlp", 0.0)))
        elif isinstance(val, (tuple, list)) and len(val) == 2:
            out[i] = (float(val[0]), float(val[1]))
        else:
            raise TunelessError(
                f"schedule entry for layer {key} must be (head_ratio, mlp_ratio) "
                "or {'heads': r, 'mlp': r}"
            )
    return out


def make_plan(
    shapes: list[Shape],
    *,
    sparsity: float | None,
    schedule="uniform",
    head_ratio: float | None = None,
    mlp_ratio: float | None = None,
    gqa: str = "kv-groups",
) -> list[LayerPlan]:
    """Per-layer kept sizes. With `sparsity`, ratios are scaled until the budget is met."""
    if gqa not in GQA_MODES:
        raise TunelessError(f"gqa={gqa!r}; choose one of {', '.join(GQA_MODES)}")
    n = len(shapes)
    if isinstance(schedule, dict):
        if sparsity is not None:
            raise TunelessError("give either sparsity or a per-layer schedule dict, not both")
        return [layer_plan(s, h, m, gqa) for s, (h, m) in zip(shapes, _from_dict(schedule, n))]
    if sparsity is None:
        if schedule == "uniform" and head_ratio is None and mlp_ratio is None:
            raise TunelessError("give sparsity=, or head_ratio=/mlp_ratio=, or a schedule dict")
        h = 0.0 if head_ratio is None else head_ratio
        m = (h if head_ratio is not None else 0.0) if mlp_ratio is None else mlp_ratio
        if schedule in ("paper", "paper-mlp"):
            return [
                layer_plan(s, hh, mm, gqa)
                for s, (hh, mm) in zip(shapes, _ratios(schedule, n, 0, 0, 1.0))
            ]
        if schedule in ("inner-mlp", "flat-mlp"):  # mlp_ratio= in their layers, heads kept
            return [layer_plan(s, 0.0, mm, gqa)
                    for s, (_, mm) in zip(shapes, _ratios(schedule, n, 0, 0, m))]
        _ratios(schedule, n, 0.0, 0.0, 1.0)  # rejects unknown schedule names
        return [layer_plan(s, h, m, gqa) for s in shapes]
    if not 0.0 <= sparsity < 0.9:
        raise TunelessError(f"sparsity={sparsity} must be in [0, 0.9)")
    if sparsity == 0.0:
        return [LayerPlan(s.n_q, s.n_kv, s.n_mlp) for s in shapes]
    return _solve(shapes, sparsity, schedule, head_ratio, mlp_ratio, gqa)


def _solve(shapes, sparsity, schedule, head_ratio, mlp_ratio, gqa) -> list[LayerPlan]:
    """Plans that remove at least `sparsity` of the blocks (and as little more as possible)."""
    n = len(shapes)
    if schedule == "uniform":
        if mlp_ratio is not None:
            raise TunelessError(
                "with sparsity=, give head_ratio (fixed) but not mlp_ratio (solved)")
        return _solve_uniform(shapes, sparsity, head_ratio, gqa)

    def plans(scale):
        return [layer_plan(s, hh, mm, gqa)
                for s, (hh, mm) in zip(shapes, _ratios(schedule, n, 0, 0, scale))]

    return _bisect(shapes, plans, sparsity, 1.9, schedule)


def _bisect(shapes, plans, sparsity, hi, what):
    if removed_fraction(shapes, plans(hi)) < sparsity:
        raise BudgetOutOfReach(f"schedule {what!r} cannot remove {sparsity:.0%} of the block "
                            "parameters; use a lower sparsity or another schedule")
    _, hi = bisect(lambda s: removed_fraction(shapes, plans(s)) >= sparsity, 0.0, hi)
    return plans(hi)


def _solve_uniform(shapes, sparsity, head_ratio, gqa) -> list[LayerPlan]:
    """Heads come in few, coarse units, so try each realisable head ratio, solve the MLP
    ratio for the budget, and keep the pair closest to one common ratio (METHODS.md §1.2)
    among those that overshoot the budget by at most OVERSHOOT (a small model's one kv
    group can be a third of its blocks: closest to a common ratio, but not what was
    asked), else the one that overshoots least."""
    if head_ratio is not None:
        candidates = [head_ratio]
    else:
        s0 = shapes[0]
        units = s0.n_kv if (gqa == "kv-groups" or s0.group == 1) else s0.group
        candidates = [j / units for j in range(units)]
    best, best_key = None, None
    for h in candidates:
        def plans(scale, h=h):
            return [layer_plan(s, min(h, 0.95), min(scale, 0.95), gqa) for s in shapes]
        try:
            result = _bisect(shapes, plans, sparsity, 0.95, "uniform")
        except BudgetOutOfReach:
            continue
        mlp_removed = 1 - result[0].n_mlp / shapes[0].n_mlp
        heads_removed = 1 - result[0].n_q / shapes[0].n_q
        over = removed_fraction(shapes, result) - sparsity
        key = (0.0, abs(mlp_removed - heads_removed)) if over <= OVERSHOOT else (over, 0.0)
        if best_key is None or key < best_key:
            best, best_key = result, key
    if best is None:
        raise BudgetOutOfReach(f"cannot remove {sparsity:.0%} of the block parameters "
                               "uniformly")
    return best


OVERSHOOT = 0.01  # a uniform plan may remove this much more than asked (channel granularity)
# the schedule of a fold without a repair (the paper's); with a repair the default fold
# chooses between inner-mlp and paper-mlp by measurement (tuneless.llm.choose)
DEFAULT_SCHEDULE = "paper-mlp"
# where paper-mlp's untouched layers cap it (about 37% of SmolLM2's block parameters):
# measured better than the uniform schedule there (docs/llm.md "Which layers")
FALLBACK_SCHEDULE = "inner-mlp"


FOLD_DEFAULTS = (DEFAULT_SCHEDULE, FALLBACK_SCHEDULE)
# structured OBS (tuneless.llm.obs) keeps more of its lead with one flat ratio over the
# layers paper-mlp folds than with paper-mlp's ramp: measured, docs/llm.md "Structured OBS"
OBS_DEFAULTS = ("flat-mlp", FALLBACK_SCHEDULE)
# as a default, a schedule is passed over once it takes more than this share of some
# layer's MLP channels: flat-mlp at 40% of SmolLM2 (89% of 18 layers' channels) gave
# OBS 187.8 against 81.9 on inner-mlp; 0.75 is paper-mlp's own deepest ratio at its reach
DEFAULT_LAYER_CAP = {"flat-mlp": 0.75}


def default_schedule(shapes, sparsity: float, gqa: str = "kv-groups",
                     order: tuple[str, ...] = FOLD_DEFAULTS) -> str:
    """The schedule the defaults use at this budget: the first of `order` (the fold's:
    paper-mlp, then inner-mlp where paper-mlp cannot remove that much) that can, else
    uniform."""
    return _default_plan(shapes, sparsity, gqa, order)[0]


def _default_plan(shapes, sparsity: float, gqa: str,
                  order: tuple[str, ...] = FOLD_DEFAULTS) -> tuple[str, list[LayerPlan]]:
    """(schedule name, its plan): the first of `order`, then uniform, that can remove
    `sparsity`, each plan solved once."""
    for name in order:
        try:
            plan = make_plan(shapes, sparsity=sparsity, schedule=name, gqa=gqa)
        except BudgetOutOfReach:
            continue
        cap = DEFAULT_LAYER_CAP.get(name, 1.0)
        if all(p.n_mlp >= (1 - cap) * s.n_mlp for s, p in zip(shapes, plan)):
            return name, plan
    return "uniform", make_plan(shapes, sparsity=sparsity, schedule="uniform", gqa=gqa)


def resolve_plan(shapes, *, sparsity=None, schedule=None, head_ratio=None, mlp_ratio=None,
                 gqa="kv-groups", defaults: tuple[str, ...] = FOLD_DEFAULTS
                 ) -> list[LayerPlan]:
    """Per-layer sizes with the default schedule when none is given (in memory and
    streamed alike): `default_schedule`'s, or the uniform one when ratios are given or no
    sparsity is (nothing to scale)."""
    if schedule is not None:
        return make_plan(shapes, sparsity=sparsity, schedule=schedule, head_ratio=head_ratio,
                         mlp_ratio=mlp_ratio, gqa=gqa)
    if (head_ratio, mlp_ratio) != (None, None) or sparsity is None:
        return make_plan(shapes, sparsity=sparsity, schedule="uniform", head_ratio=head_ratio,
                         mlp_ratio=mlp_ratio, gqa=gqa)
    return _default_plan(shapes, sparsity, gqa, defaults)[1]
