"""The default fold's schedule, chosen by measurement on text the model samples itself.

inner-mlp (every layer's MLP but the first tenth's and the last's) is the better schedule
where a model's early layers can take a fold (SmolLM2-135M at 20%: 1.52x dense against
paper-mlp's 1.60x, 3 seeds), and a gross failure where they cannot (Gemma 3 270M: 10.7x
and 17.4x against 1.68x and 1.57x). The two are told apart by the folded model's
perplexity on a few sequences the original sampled and the repair never saw: inner-mlp's
fold is kept unless it multiplies that perplexity by more than GUARD_RATIO (SmolLM2 at
20%: 1.50-1.65; Gemma 3 at 10-30%: 2.43-10.8); then paper-mlp, which leaves the first
third of the layers whole, is folded from the same calibration tokens and whichever of the
two has the lower perplexity on those sequences is kept. Beyond paper-mlp's reach the
alternative is flat-mlp (paper-mlp's layers, one ratio however deep: Gemma 3 at 40% 6.1x
dense against inner-mlp's 95x). docs/llm.md "The schedule, chosen by measurement".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PRIMARY = "inner-mlp"
ALTERNATIVE = "paper-mlp"
# beyond paper-mlp's reach, the guard's alternative: one MLP ratio in paper-mlp's layers,
# however deep (Gemma 3 at 40%: 335.9 against inner-mlp's 6,150, docs/llm.md)
BEYOND = "flat-mlp"
GUARD_RATIO = 2.0  # more than doubling the perplexity on the model's own text: a bad fold
HELD_OUT = 4  # self-sampled sequences the choice is judged on, never in the repair


@dataclass
class Candidates:
    """What the default fold tries at a budget: `primary`, and `alternative` (None when it
    cannot reach the budget, so there is nothing to choose)."""

    primary: str
    alternative: str | None


def default_candidates(shapes, sparsity: float, gqa: str, primary: str = PRIMARY,
                       alternative: str = ALTERNATIVE) -> Candidates:
    """`primary` (inner-mlp) guarded by `alternative` (paper-mlp) where both reach the
    budget; beyond paper-mlp's reach guarded by BEYOND (flat-mlp, without the layer cap of
    the defaults) where that reaches it; else the first that does, unguarded (uniform where
    none does)."""
    from tuneless.llm.plan import BudgetOutOfReach, default_schedule, make_plan

    first = default_schedule(shapes, sparsity, gqa, order=(primary, alternative))
    if first != primary:
        return Candidates(first, None)
    if default_schedule(shapes, sparsity, gqa, order=(alternative,)) == alternative:
        return Candidates(primary, alternative)
    try:
        make_plan(shapes, sparsity=sparsity, schedule=BEYOND, gqa=gqa)
    except BudgetOutOfReach:
        return Candidates(primary, None)
    return Candidates(primary, BEYOND)


def choose(candidates: Candidates, build, judge, held: torch.Tensor) -> tuple[object, dict]:
    """The rule, for a model in memory or a checkpoint folder alike: build(schedule) -> the
    compressed, repaired result; judge(result) -> its own-text ratio on `held`. The
    primary's result unless it fails the guard, then the lower of the two. Returns the
    kept result and its choice_record."""
    built = {candidates.primary: build(candidates.primary)}
    tried = {candidates.primary: judge(built[candidates.primary])}
    if candidates.alternative is not None and guard_failed(tried[candidates.primary]):
        built[candidates.alternative] = build(candidates.alternative)
        tried[candidates.alternative] = judge(built[candidates.alternative])
    record = choice_record(tried, held)
    return built[record["kept"]], record


def choose_schedule(model: nn.Module, candidates: Candidates, build, held: torch.Tensor
                    ) -> nn.Module:
    """`choose` for models in memory: build(schedule) -> the compressed, repaired model.
    The choice and the measured ratios go to the result's tuneless_report["schedule_choice"]
    and its config (saved with it, as the streamed fold saves it)."""
    base = own_text_perplexity(model, held)
    small, record = choose(candidates, build,
                           lambda m: own_text_perplexity(m, held) / base, held)
    small.tuneless_report["schedule_choice"] = record
    if getattr(small, "config", None) is not None:
        small.config.tuneless_schedule_choice = record
    return small


def describe_choice(record: dict) -> str:
    """One line for the command line: the kept schedule and what was measured."""
    ratios = ", ".join(f"{k} ×{v:.2f}" for k, v in record["own_text_ratio"].items())
    return (f"schedule {record['kept']} (perplexity on {record['held_out'][0]} held-out "
            f"self-sampled sequences against the original's: {ratios}; above "
            f"×{record['guard_ratio']:g} the other schedule is tried)")


def choice_record(tried: dict[str, float], held: torch.Tensor) -> dict:
    """What the choice measured and kept (the lowest ratio; the primary on a tie)."""
    return {"kept": min(tried, key=tried.get),
            "own_text_ratio": {k: round(v, 4) for k, v in tried.items()},
            "guard_ratio": GUARD_RATIO, "held_out": list(held.shape)}


def own_text_perplexity(model: nn.Module, held: torch.Tensor) -> float:
    """exp(mean NLL) of `model` on the held-out rows (each row one window)."""
    from tuneless.llm.perplexity import perplexity_of_ids

    return perplexity_of_ids(model, held.flatten(), held.shape[1], progress=False)


def guard_failed(ratio: float) -> bool:
    """Whether a fold that multiplies the own-text perplexity by `ratio` is passed over."""
    return ratio > GUARD_RATIO
