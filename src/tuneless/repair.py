"""Repairs that undo the variance collapse of folding: none, AR (closed form), DIR, data,
and the least-squares refits (on real inputs, or on inputs the model synthesises: self).

Averaging k channels into one shrinks the activation's variance; the next BN then
normalises with statistics that no longer fit. AR rescales the merged BN γ in
closed form (no data); Fold-R re-estimates every BN's running statistics from real
images; DIR does the same from images synthesised from the uncompressed model.
Each repair declares whether it needs data and whether it needs BatchNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from tuneless.bn_stats import reestimate_bn
from tuneless.data.loader import image_batches
from tuneless.decisions import Merge
from tuneless.errors import TunelessError
from tuneless.modelcheck import batchnorms

__all__ = ["REPAIRS", "Repair", "RepairContext", "ar_factors", "batchnorms",
           "fuse_bn_normalisation", "get_repair", "image_batches", "reestimate_bn",
           "register_repair", "require_batchnorm"]


@dataclass
class RepairContext:
    """What a repair may use after the engine has rewritten the model (methods/fold.py)."""

    original: nn.Module  # the uncompressed model, untouched
    work: nn.Module  # the model the decisions were computed on (BN possibly fused)
    new: nn.Module  # the reduced model, repaired in place or replaced
    graph: object  # the GroupGraph
    labels: dict  # group id -> cluster labels
    decisions: dict  # group id -> (M, U)
    options: object  # FoldOptions
    data: object = None
    example_inputs: object = None

    @property
    def reference(self) -> nn.Module:
        """The uncompressed network in the channel scales the decisions were made in: the
        maps express the new channels in `work`'s, which differ from the original's where
        `balance` rescaled them (the same function, other per-channel outputs)."""
        return self.work if getattr(self.options, "balance", False) else self.original

    @property
    def maps(self) -> dict:
        """Group id -> M (k × n): each new channel in the original's channels."""
        return {gid: d.M if isinstance(d, Merge) else d[0] for gid, d in self.decisions.items()}


@dataclass(frozen=True)
class Repair:
    """A repair and what it needs. `models` says where the name applies ("cnn": traced
    networks, "llm": decoder language models); one name has one meaning on both."""

    name: str
    needs_data: bool
    needs_bn: bool
    summary: str
    models: tuple[str, ...] = ("cnn",)
    apply: Callable[[RepairContext], nn.Module] | None = None
    uses_images: str = ""  # what it does with real images, for the CLI's messages


REPAIRS: dict[str, Repair] = {}


def register_repair(repair: Repair) -> Repair:
    """Add a repair; the CLI, the benchmarks and the option checks read its declarations."""
    REPAIRS[repair.name] = repair
    return repair


def get_repair(name: str, model_kind: str = "cnn") -> Repair:
    rep = REPAIRS.get(name)
    if rep is not None and model_kind in rep.models:
        return rep
    names = ", ".join(n for n, r in REPAIRS.items() if model_kind in r.models)
    if rep is None:
        raise TunelessError(f"unknown repair {name!r}; choose one of {names}")
    kind = "language models" if model_kind == "llm" else "this model"
    hint = ("; 'data' re-estimates BatchNorm statistics and a language model has none: 'refit' "
            "is the least-squares repair on your tokens, 'self' on the model's own samples"
            if name == "data" else "")
    raise TunelessError(f"repair {name!r} does not apply to {kind}; choose one of {names}{hint}")


def _ar(ctx: RepairContext) -> nn.Module:
    _apply_ar(ctx.work, ctx.new, ctx.graph, ctx.labels)
    return ctx.new


def _refit(ctx: RepairContext) -> nn.Module:
    from tuneless.layer_refit import refit_layers

    opts = ctx.options
    return refit_layers(ctx.reference, ctx.new, ctx.graph, ctx.maps, ctx.data,
                        num_images=opts.refit_images, batch_size=min(opts.batch_size, 64),
                        ridge=opts.ridge, inplace=True)


# Fold-DIR's DeepInversion settings when it matches statistics (the default): matching
# aims at what the original computes on the images, so it needs far less optimised images
# than re-estimation, which aims at the training statistics (docs/folding.md "Fold-DIR
# with statistics matching"; re-estimation keeps InversionConfig's 100 steps at lr 0.1)
DIR_MATCH_INVERSION = {"steps": 50, "lr": 0.2}


def _synthesized(ctx: RepairContext, repair: str, defaults: dict | None = None) -> torch.Tensor:
    """DeepInversion images of the uncompressed model (the data-free repairs' inputs);
    `defaults` under the user's `inversion` overrides."""
    from tuneless.deepinversion import synthesize

    x = ctx.example_inputs
    if not isinstance(x, torch.Tensor):
        raise TunelessError(f"repair '{repair}' needs example_inputs as an image tensor")
    settings = {**(defaults or {}), **ctx.options.inversion}
    return synthesize(ctx.original, x, seed=ctx.options.seed, **settings)


def dir_inversion(dir_stats: str) -> dict:
    """The DeepInversion settings repair "dir" uses before the user's overrides."""
    return dict(DIR_MATCH_INVERSION) if dir_stats == "match" else {}


def _dir(ctx: RepairContext) -> nn.Module:
    images = _synthesized(ctx, "dir", dir_inversion(ctx.options.dir_stats))
    if ctx.options.dir_stats == "match":
        return _match(RepairContext(**{**vars(ctx), "data": images}))
    return reestimate_bn(ctx.new, images, batch_size=ctx.options.batch_size, inplace=True)


def _self(ctx: RepairContext) -> nn.Module:
    """The refit, with DeepInversion images of the uncompressed model as its data: the CNN
    counterpart of a language model refitted on the text it samples itself (no data)."""
    return _refit(RepairContext(**{**vars(ctx), "data": _synthesized(ctx, "self")}))


def _data(ctx: RepairContext) -> nn.Module:
    opts = ctx.options
    return reestimate_bn(ctx.new, ctx.data, num_images=opts.num_images,
                         batch_size=opts.batch_size, inplace=True)


def _match(ctx: RepairContext) -> nn.Module:
    from tuneless.bn_match import match_bn_layers

    opts = ctx.options
    return match_bn_layers(ctx.reference, ctx.new, ctx.graph, ctx.maps, ctx.data,
                           num_images=opts.num_images, batch_size=opts.batch_size, inplace=True)


register_repair(Repair("none", False, False, "no repair (Fold-Naive)", ("cnn", "llm")))
register_repair(Repair("ar", False, True,
                       "closed-form γ rescale from weight correlations (Fold-AR)", apply=_ar))
register_repair(Repair("dir", False, True, "DeepInversion images of the uncompressed model, "
                       "then BN statistics matched to its own on them (Fold-DIR; "
                       "dir_stats='reestimate': the paper's BN re-estimation)", apply=_dir))
register_repair(Repair("data", True, True, "BN re-estimation on real images (Fold-R)",
                       apply=_data, uses_images="re-estimates BatchNorm statistics"))
register_repair(Repair("match", True, True, "BN statistics matched to the uncompressed "
                       "model's on real images (REPAIR-style, beyond the paper; "
                       "tuneless.bn_match): unchanged channels stay unchanged on any data",
                       apply=_match,
                       uses_images="matches BatchNorm statistics to the uncompressed model's"))
register_repair(Repair("refit", True, False, "least-squares refit on real inputs (beyond the "
                       "paper): every conv/linear layer of a CNN (tuneless.layer_refit), the "
                       "o_proj/down_proj of a language model on token ids (tuneless.llm.refit)",
                       ("cnn", "llm"), apply=_refit,
                       uses_images="refits every layer by least squares"))
register_repair(Repair("self", False, True, "least-squares refit on inputs the uncompressed "
                       "model makes itself (data-free): every conv/linear of a CNN on its "
                       "DeepInversion images, the o_proj/down_proj of a language model on "
                       "text it samples (tuneless.llm.refit)", ("cnn", "llm"), apply=_self))


def require_batchnorm(model: nn.Module, repair: str) -> None:
    """A repair that works through BatchNorm refuses, by name, a model that has none."""
    if get_repair(repair).needs_bn and not batchnorms(model):
        raise TunelessError(
            f"repair {repair!r} works through BatchNorm layers but the model has none; "
            "use repair='none'"
        )


# --------------------------------------------------------------------------- AR


def ar_factors(rows: torch.Tensor, labels: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Per-cluster γ scale sqrt(N / (1 + (N − 1)·E)), E = mean pairwise cosine of member rows.

    rows are the BN-fused producer rows Ŵ (channels × fan-in). Var of a mean of N
    unit-variance activations with mean pairwise correlation E is (1 + (N−1)E)/N,
    under the paper's assumption of uncorrelated, equal-variance inputs. Guards:
    singletons (and zero rows, whose cosine is taken as 0) keep what the formula
    gives them; E is clamped to [0, 1], so the factor lies in [1, sqrt(N)] and a
    cluster of anti-correlated rows can never blow up (1 + (N − 1)E ≥ 1 > 0).
    """
    if rows.dim() != 2 or labels.dim() != 1 or rows.shape[0] != labels.shape[0]:
        raise TunelessError("ar_factors needs rows (n × f) and one label per row")
    k = int(labels.max()) + 1 if k is None else k
    r = rows.detach().float()  # unit rows: float32 is ample, the sums below are float64
    norms = r.norm(dim=1, keepdim=True)
    unit = r / norms.clamp(min=1e-30)  # zero rows stay zero (cosine taken as 0)
    sums = torch.zeros(k, r.shape[1]).index_add_(0, labels, unit).double()
    self_sim = torch.zeros(k, dtype=torch.float64).index_add_(
        0, labels, (norms.squeeze(1) > 0).double())
    n = torch.bincount(labels, minlength=k).double()
    pairs = (n * (n - 1)).clamp(min=1)
    mean_cos = ((sums * sums).sum(1) - self_sim) / pairs
    mean_cos = torch.where(n > 1, mean_cos.clamp(0.0, 1.0), torch.ones_like(mean_cos))
    return torch.sqrt(n / (1 + (n - 1) * mean_cos)).clamp(min=1.0)


@torch.no_grad()
def _apply_ar(work: nn.Module, new: nn.Module, graph, labels: dict,
              through_relu: bool = True) -> None:
    """Multiply each merged BN γ by sqrt(N/(1+(N−1)E)), E from its own producer's Ŵ rows —
    with through_relu also for a BN after a ReLU / LeakyReLU of that producer (positively
    homogeneous: the merged channel's spread shrinks by the same factor after it)."""
    for g in graph.reducible:
        if g.id not in labels:
            continue
        for s in g.norms:
            source = s.producer or (s.relu_producer if through_relu else None)
            if s.param != "weight" or source is None:
                continue
            prod = [p for p in g.producers if p.module == source and p.param == "weight"]
            if not prod:
                continue
            rows = prod[0].channel_rows(work, g.n).double()
            f = ar_factors(rows, labels[g.id])
            gamma = s.tensor(new)
            gamma.narrow(0, _new_offset(graph, s, labels), len(f)).mul_(f.to(gamma.dtype))


def _new_offset(graph, slot, labels: dict) -> int:
    """Where a slot's channels start after reduction (groups side by side on one axis)."""
    start = 0
    for g, s in graph.slots():
        if (s.module, s.param, s.axis) == (slot.module, slot.param, slot.axis) \
                and s.offset < slot.offset:
            start += int(labels[g.id].max()) + 1 if g.id in labels else g.n
    return start


def describe() -> str:
    return "; ".join(f"{r.name}: {r.summary}" + (" [needs data]" if r.needs_data else "")
                     for r in REPAIRS.values())



# --------------------------------------------------------------------------- BN fusion (AR step 1)


def bn_producers(graph) -> dict[str, str]:
    """BatchNorm module name → the conv/linear that feeds it directly (from the norm slots)."""
    out = {}
    for g in graph:
        for s in g.norms:
            if s.producer is not None:
                out.setdefault(s.module, s.producer)
    return out


@torch.no_grad()
def fuse_bn_normalisation(model: nn.Module, graph) -> list[str]:
    """In place: fold each BN's 1/sqrt(var + eps) and mean into the conv/linear before it.

    Ŵ = W / sqrt(var + eps), bias / sqrt(var + eps), running_mean / sqrt(var + eps) and
    running_var = 1 − eps, so the BN then applies only γ and β and the network computes
    the same function. The fused bias (b − mean)/sqrt(var + eps) is carried by the
    conv bias and the BN's running_mean together, so no parameter is added.
    Returns the fused BN names.
    """
    fused = []
    for bn_name, prod_name in bn_producers(graph).items():
        bn = model.get_submodule(bn_name)
        prod = model.get_submodule(prod_name)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
            continue
        if not isinstance(prod, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        if prod.weight.shape[0] != bn.running_var.shape[0]:
            continue
        scale = 1.0 / torch.sqrt(bn.running_var + bn.eps)
        prod.weight.mul_(scale.view(-1, *([1] * (prod.weight.dim() - 1))).to(prod.weight.dtype))
        if prod.bias is not None:
            prod.bias.mul_(scale)
        bn.running_mean.mul_(scale)
        bn.running_var.fill_(1.0 - bn.eps)
        fused.append(bn_name)
    return fused
