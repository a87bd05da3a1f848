"""Low-rank compression: each conv/linear layer becomes two thinner layers from its truncated SVD.

    small = tuneless.svd(model, sparsity=0.5)   # remove 50% of the model's parameters
    small.tuneless_report["achieved_sparsity"]  # what was achieved; per-layer ranks in ["layers"]

A conv weight (O, I, *k) is matricised as M = W.reshape(O, I·k) = U S Vᵀ (METHODS.md §2.2) and
replaced by nn.Sequential(first, second): first an I→r conv with the original kernel, stride,
padding, dilation and weight Vᵀ[:r]; then an r→O 1×1 conv with weight U[:, :r]·S[:r] and the
original bias. A linear layer becomes two linears the same way. A layer is replaced only below its
break-even rank r* = O·I·k / (O + I·k), where the two factors hold fewer parameters than W.

Kept dense, with the reason in the report: grouped and depthwise convs, transposed convs, layers
inside nn.MultiheadAttention (it reads out_proj.weight directly), layers whose weight is tied to
another module, and layers under a parametrisation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from tuneless.errors import TunelessError, UnsupportedModelError
from tuneless.modelcheck import check_model
from tuneless.modes import evaluating
from tuneless.whitening import (
    LAYERS,
    bn_input_scales,
    cholesky_factor,
    input_second_moments,
    traced_layers,
)

FACTORISABLE = LAYERS  # conv/linear (tuneless.whitening walks the same layers)
ALLOCATIONS = ("per-param", "sigma")
WEIGHTINGS = ("none", "bn")
WHITENINGS = ("none", "bn", "dir", "data")


@dataclass
class LayerSpectrum:
    """One factorisable layer: its SVD and the parameter arithmetic of truncating it."""

    name: str
    module: nn.Module
    out: int  # O
    inner: int  # I·k (the columns of the matricised weight)
    u: torch.Tensor
    s: torch.Tensor
    vh: torch.Tensor
    row_scale: torch.Tensor | None = None  # the SVD was of diag(row_scale)·M
    col_factor: torch.Tensor | None = None  # ... ·L: a vector (diagonal L) or lower-triangular

    @property
    def full_rank(self) -> int:
        return len(self.s)

    @property
    def dense_params(self) -> int:
        return self.out * self.inner

    @property
    def rank_step(self) -> int:
        """Parameters one unit of rank costs in factored form."""
        return self.out + self.inner

    @property
    def break_even(self) -> float:
        return self.dense_params / self.rank_step

    @property
    def max_useful_rank(self) -> int:
        """The largest rank that still saves parameters (0 if none does)."""
        return min(self.full_rank, math.ceil(self.break_even) - 1)

    def saved(self, rank: int | None) -> int:
        """Weight parameters removed at this rank; 0 (kept dense) at or above break-even."""
        if rank is None:
            return 0
        return max(0, self.dense_params - rank * self.rank_step)

    def energy(self) -> torch.Tensor:
        """Normalised σ²: the share of ||W||_F² each singular direction carries."""
        e = self.s.pow(2)
        total = e.sum()
        return e / total if total > 0 else torch.full_like(e, 1.0 / len(e))


def factorise_layer(layer: nn.Module, rank: int) -> nn.Sequential:
    """The rank-r two-layer replacement of a conv/linear layer (no break-even check).

    At full rank it computes the same function as `layer` up to float rounding.
    """
    spec = _spectrum("", layer)
    if not 1 <= rank <= spec.full_rank:
        raise TunelessError(f"rank must be in [1, {spec.full_rank}] for this layer, got {rank}")
    return build_pair(spec, rank)


GRAM_ABOVE = 1 << 17  # matrices with more entries go through the Gram-matrix route


def thin_svd(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vᵀ of a float64 matrix, σ descending.

    Large matrices use an eigendecomposition of the smaller Gram matrix (M Mᵀ or Mᵀ M), about
    6× faster than LAPACK's SVD here. The recovered factors still reproduce M exactly at full
    rank (U S Vᵀ = U Uᵀ M), and the top directions are accurate; only σ below ~1e-8·σ_max lose
    precision, and those are the first to be truncated anyway.
    """
    if m.numel() <= GRAM_ABOVE:
        return torch.linalg.svd(m, full_matrices=False)
    wide = m.shape[0] <= m.shape[1]
    g = m @ m.T if wide else m.T @ m
    evals, evecs = torch.linalg.eigh(g)
    evals, evecs = evals.flip(0), evecs.flip(1)
    s = evals.clamp_min(0).sqrt()
    inv = torch.where(s > s[0] * 1e-12, 1 / s, torch.zeros_like(s))
    if wide:
        return evecs, s, (evecs.T @ m) * inv[:, None]
    return (m @ evecs) * inv, s, evecs.T


def _spectrum(name: str, layer: nn.Module, row_scale: torch.Tensor | None = None,
              col_factor: torch.Tensor | None = None) -> LayerSpectrum:
    w = layer.weight.detach()
    m = w.reshape(w.shape[0], -1).double()
    if row_scale is not None:
        m = m * row_scale[:, None]
    if col_factor is not None:
        m = m * col_factor if col_factor.dim() == 1 else m @ col_factor
    u, s, vh = thin_svd(m)
    return LayerSpectrum(name, layer, w.shape[0], m.shape[1], u, s, vh, row_scale, col_factor)


def following_norms(model: nn.Module) -> dict[str, nn.Module]:
    """Layer name → the BatchNorm that is the sole consumer of its output (via torch.fx).

    Empty if the model cannot be traced; the caller then weighs every output channel alike.
    """
    layers, modules = traced_layers(model)
    out = {}
    for node, _ in layers:
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            norm = modules.get(users[0].target)
            if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_var is not None:
                out[node.target] = norm
    return out


def norm_scale(norm: nn.Module) -> torch.Tensor:
    """|γ| / sqrt(running_var + eps): how much the norm amplifies each channel's error."""
    scale = (norm.running_var.detach().double() + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.detach().double().abs()
    return scale.clamp_min(float(scale.max()) * 1e-8 + 1e-30)


def build_pair(spec: LayerSpectrum, rank: int) -> nn.Sequential:
    """Linear(I→r)·Linear(r→O) (or conv then 1×1 conv) from the spectrum's first r factors."""
    layer = spec.module
    w = layer.weight
    kw = {"device": w.device, "dtype": w.dtype}
    first_w = spec.vh[:rank]
    if spec.col_factor is not None and spec.col_factor.dim() == 1:
        first_w = first_w / spec.col_factor
    elif spec.col_factor is not None:  # Vᵀ_r L⁻¹
        first_w = torch.linalg.solve_triangular(spec.col_factor, first_w, upper=False,
                                                left=False)
    second_w = spec.u[:, :rank] * spec.s[:rank]
    if spec.row_scale is not None:
        second_w = second_w / spec.row_scale[:, None]
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False, **kw)
        second = nn.Linear(rank, layer.out_features, bias=has_bias, **kw)
    else:
        conv = type(layer)
        first = conv(layer.in_channels, rank, layer.kernel_size, stride=layer.stride,
                     padding=layer.padding, dilation=layer.dilation, groups=1, bias=False,
                     padding_mode=layer.padding_mode, **kw)
        second = conv(rank, layer.out_channels, 1, bias=has_bias, **kw)
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second.weight.shape))
        if has_bias:
            second.bias.copy_(layer.bias)
    pair = nn.Sequential(first, second)
    pair.train(layer.training)
    return pair


def factorise(layer: nn.Module, rank: int) -> nn.Sequential:
    """The best rank-`rank` pair (truncated SVD, float64) replacing one conv/linear layer."""
    return build_pair(_spectrum("", layer), rank)


def _why_not_factorisable(name: str, m: nn.Module, parent: nn.Module | None,
                          tied: set[int]) -> str | None:
    if isinstance(parent, nn.MultiheadAttention):
        return "inside nn.MultiheadAttention"
    if parametrize.is_parametrized(m):
        return "weight is parametrised"
    if not isinstance(m.weight, nn.Parameter) or m.weight.is_meta:
        return "weight is not a materialised parameter"
    if id(m.weight) in tied:
        return "weight is tied to another module"
    if not isinstance(m, nn.Linear) and m.groups != 1:
        return f"grouped conv (groups={m.groups})"
    return None


def candidate_layers(model: nn.Module, exclude: Iterable[str] = ()
                     ) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """The layers SVD may factorise, and the reasons the other weight layers stay dense."""
    exclude = set(exclude)
    modules = dict(model.named_modules())
    unknown = exclude - set(modules)
    if unknown:
        raise TunelessError(f"exclude names modules this model does not have: {sorted(unknown)}")
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    tied = {pid for pid, n in counts.items() if n > 1}
    found, dense = [], {}
    for name, m in modules.items():
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            dense[name] = "transposed conv"
            continue
        if not isinstance(m, FACTORISABLE):
            continue
        parent = modules[name.rsplit(".", 1)[0]] if "." in name else model
        reason = "excluded by the caller" if name in exclude else \
            _why_not_factorisable(name, m, parent, tied)
        if reason:
            dense[name] = reason
        else:
            found.append((name, m))
    return found, dense


def _check_fraction(value, what: str, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise TunelessError(f"{what} must be a number, got {value!r}")
    ok = (0 < value <= 1) if low_open else (0 <= value < 1)
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1)"
        raise TunelessError(f"{what} must be in {interval}, got {value}")
    return float(value)


def ranks_by_energy(spectra: list[LayerSpectrum], energy: float, min_rank: int
                    ) -> dict[str, int]:
    """Per layer, the smallest rank keeping `energy` of ||W||_F²."""
    ranks = {}
    for sp in spectra:
        cum = torch.cumsum(sp.energy(), 0)
        r = int((cum < energy - 1e-12).sum()) + 1
        ranks[sp.name] = min(sp.full_rank, max(min_rank, r))
    return ranks


def ranks_by_ratio(spectra: list[LayerSpectrum], ratio: float, min_rank: int) -> dict[str, int]:
    """Per layer, the same kept fraction of the full rank (rounded up)."""
    return {sp.name: min(sp.full_rank, max(min_rank, math.ceil(ratio * sp.full_rank - 1e-9)))
            for sp in spectra}


def ranks_by_budget(spectra: list[LayerSpectrum], target: int, allocation: str, min_rank: int,
                    total_params: int) -> dict[str, int]:
    """Ranks that remove about `target` parameters, dropping the cheapest singular directions first.

    Every singular direction beyond min_rank is a candidate to drop. "sigma" orders them by
    normalised σ² (the share of the layer's energy lost); "per-param" by that share divided by
    the parameters one rank unit costs in the layer, i.e. energy lost per parameter saved.
    Directions are dropped in that order (always from a layer's tail) until the parameters saved,
    counting a layer as dense until it is below break-even, reach the target; the prefix whose
    saving is closest to the target is returned.
    """
    steps = []
    usable = [sp for sp in spectra if sp.max_useful_rank >= min_rank]
    for li, sp in enumerate(usable):
        e = sp.energy().tolist()
        scale = 1.0 / sp.rank_step if allocation == "per-param" else 1.0
        steps += [(e[j] * scale, -j, li) for j in range(min_rank, sp.full_rank)]
    steps.sort()
    ranks = [sp.full_rank for sp in usable]
    saved = 0
    best = (target, {sp.name: sp.full_rank for sp in usable})  # (distance to target, ranks)
    for _, neg_j, li in steps:
        sp = usable[li]
        before = sp.saved(ranks[li])
        ranks[li] = -neg_j
        saved += sp.saved(ranks[li]) - before
        if abs(saved - target) < best[0]:
            best = (abs(saved - target), {s.name: r for s, r in zip(usable, ranks)})
        if saved >= target:
            break
    else:
        most = saved / total_params
        raise TunelessError(
            f"SVD cannot remove {target / total_params:.1%} of this model's parameters: at most "
            f"{most:.1%} can go (every factorisable layer at rank {min_rank}, others dense)"
        )
    return best[1]


def _inverted_images(model: nn.Module, example_inputs, inversion: dict, seed: int
                     ) -> tuple[torch.Tensor, int]:
    from tuneless.deepinversion import synthesize
    from tuneless.modelio import example_input

    x = example_inputs if isinstance(example_inputs, torch.Tensor) else example_input(model)
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        raise TunelessError("whiten='dir' needs example_inputs= (a batch of images) to know "
                            "the input shape")
    images = synthesize(model, x, seed=seed, **inversion)
    return images, len(images)


def _column_factors(model: nn.Module, layers: dict[str, nn.Module], whiten: str, data,
                    images: int) -> dict[str, torch.Tensor]:
    """Layer name → its input factor L (a vector: diagonal) for `whiten`."""
    if whiten == "bn":
        return {k: v for k, v in bn_input_scales(model).items() if k in layers}
    if whiten in ("data", "dir"):
        moments = input_second_moments(model, layers, data, images=images)
        return {name: cholesky_factor(m) for name, m in moments.items()}
    return {}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _check_runs(original: nn.Module, small: nn.Module, example_inputs) -> None:
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    outs = []
    for m in (original, small):
        try:
            with torch.no_grad(), evaluating(m):
                outs.append(m(*args))
        except Exception as exc:
            raise TunelessError(
                f"the model does not run on example_inputs: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
    a, b = outs
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape != b.shape:
        raise TunelessError(f"output shape changed from {tuple(a.shape)} to {tuple(b.shape)}")


def svd(model: nn.Module, *, sparsity: float | None = None, energy: float | None = None,
        rank_ratio: float | None = None, example_inputs=None, min_rank: int = 1,
        allocation: str = "per-param", weighting: str = "none", whiten: str = "none",
        data=None, whiten_images: int = 256, inversion: dict | None = None, seed: int = 0,
        exclude: Iterable[str] = ()) -> nn.Module:
    """A new model whose conv/linear layers are truncated-SVD pairs; the input is left untouched.

    Give exactly one of:
    - sparsity: fraction of the WHOLE model's parameters to remove, shared out globally
      (`allocation`: "per-param" drops the singular directions losing the least energy per
      parameter saved, "sigma" those with the smallest normalised σ²);
    - energy: per layer, keep the smallest rank holding this share of Σσ²;
    - rank_ratio: per layer, keep this fraction of the full rank.
    Layers whose chosen rank is not below break-even stay dense. `exclude` names modules to keep
    dense. weighting="bn" (data-free) truncates diag(|γ|/σ)·W instead of W for a layer followed
    by a BatchNorm, i.e. measures the error after the norm, where it reaches the next layer.
    whiten (the input side, tuneless.whitening) truncates W·L, LLᵀ = E[xxᵀ] of the layer's
    input, so each layer loses the least *output* energy and the global allocation compares
    output errors: "bn" (data-free) takes each input channel's second moment from the
    BatchNorm it reads (through ReLU, pooling, flattening; other layers stay unwhitened),
    "dir" (data-free) the Cholesky factor of the input patches' second moment on images
    the model itself synthesises by DeepInversion (InversionConfig; `inversion` overrides its
    settings, `seed` seeds it; minutes on a CPU), "data" the same on `whiten_images` real
    images of `data` (SVD-LLM's whitening). Measured in docs/smooth-svd.md.
    `example_inputs`, if given, checks that the result runs and keeps the output shape.
    The result carries `tuneless_report`: achieved sparsity, parameter counts and per-layer ranks.
    """
    from tuneless.llm.adapters import is_hf_causal_lm

    if is_hf_causal_lm(model):  # a decoder LM: the block projections, same budget meaning
        from tuneless.llm import svd_llm

        if sparsity is None or energy is not None or rank_ratio is not None:
            raise TunelessError("language models take svd(model, sparsity=) (the fraction of "
                                "decoder-block parameters removed)")
        return svd_llm(model, sparsity)
    check_model(model, "svd")  # options are checked one by one below
    given = [k for k, v in (("sparsity", sparsity), ("energy", energy),
                            ("rank_ratio", rank_ratio)) if v is not None]
    if len(given) != 1:
        raise TunelessError("give exactly one of sparsity=, energy= or rank_ratio= "
                            f"(got {', '.join(given) or 'none'})")
    if isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 1:
        raise TunelessError(f"min_rank must be an integer ≥ 1, got {min_rank!r}")
    if allocation not in ALLOCATIONS:
        raise TunelessError(
            f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}"
        )
    if weighting not in WEIGHTINGS:
        raise TunelessError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if whiten not in WHITENINGS:
        raise TunelessError(f"whiten must be one of {', '.join(WHITENINGS)}, got {whiten!r}")
    if whiten == "data" and data is None:
        raise TunelessError("whiten='data' needs data= (real input images)")
    if whiten == "dir":  # the model's own DeepInversion images stand in for data
        data, whiten_images = _inverted_images(model, example_inputs, inversion or {}, seed)
    if isinstance(whiten_images, bool) or not isinstance(whiten_images, int) or whiten_images < 2:
        raise TunelessError(f"whiten_images must be an integer ≥ 2, got {whiten_images!r}")

    from tuneless.reduce import remember_original

    small = copy.deepcopy(model)
    remember_original(small, model)
    layers, dense = candidate_layers(small, exclude)
    if not layers:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no conv or linear layer SVD can factorise"
            + (f" ({'; '.join(f'{k}: {v}' for k, v in dense.items())})" if dense else "")
        )
    norms = following_norms(small) if weighting == "bn" else {}
    cols = _column_factors(small, dict(layers), whiten, data, whiten_images)
    spectra = [_spectrum(name, m, norm_scale(norms[name]) if name in norms else None,
                         cols.get(name)) for name, m in layers]
    total = sum(p.numel() for p in small.parameters())
    if sparsity is not None:
        s = _check_fraction(sparsity, "sparsity", low_open=False)
        ranks = ranks_by_budget(spectra, round(s * total), allocation, min_rank, total) if s else {}
    elif energy is not None:
        ranks = ranks_by_energy(spectra, _check_fraction(energy, "energy", True), min_rank)
    else:
        ranks = ranks_by_ratio(spectra, _check_fraction(rank_ratio, "rank_ratio", True), min_rank)

    rows = []
    for sp in spectra:
        r = ranks.get(sp.name, sp.full_rank)
        replaced = sp.saved(r) > 0
        if replaced:
            _replace(small, sp.name, build_pair(sp, r))
        rows.append({
            "layer": sp.name, "shape": tuple(sp.module.weight.shape), "full_rank": sp.full_rank,
            "break_even": round(sp.break_even, 2), "rank": r if replaced else None,
            "energy_kept": float(sp.energy()[:r].sum()) if replaced else 1.0,
            "params_before": sp.dense_params, "params_after": sp.dense_params - sp.saved(r),
        })
    after = sum(p.numel() for p in small.parameters())
    if example_inputs is not None:
        _check_runs(model, small, example_inputs)
    small.tuneless_report = {
        "method": "svd",
        "options": {"sparsity": sparsity, "energy": energy, "rank_ratio": rank_ratio,
                    "min_rank": min_rank, "allocation": allocation, "weighting": weighting,
                    "whiten": whiten,
                    "whiten_images": whiten_images if whiten in ("data", "dir") else None,
                    "inversion": inversion, "seed": seed,
                    "exclude": sorted(exclude)},
        "bn_weighted_layers": len(norms), "whitened_layers": len(cols),
        "requested_sparsity": sparsity, "achieved_sparsity": 1 - after / total,
        "params_before": total, "params_after": after, "physically_smaller": True,
        "layers_replaced": sum(r["rank"] is not None for r in rows),
        "layers": rows, "kept_dense": dense,
    }
    return small


__all__ = ["ALLOCATIONS", "LayerSpectrum", "candidate_layers", "factorise_layer",
           "ranks_by_budget", "ranks_by_energy", "ranks_by_ratio", "svd"]
