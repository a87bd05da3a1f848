"""Singular-value diagnostics: how low-rank each layer is, to compare smooth and plain training.

A layer whose energy (Σσ²) sits in few singular directions loses little when SVD truncates it;
the rank needed for 90/95/99% of the energy, against the break-even rank, says how much SVD can
remove from it before accuracy must suffer.

    rows = spectral_rows(model)                       # one row per conv/linear layer
    text = spectral_markdown({"plain": a, "d2": b})   # summary + per-layer table
    plot_spectra({"plain": a, "d2": b}, "docs/results/spectra.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn as nn

from tuneless.errors import TunelessError
from tuneless.report import save_figure

LEVELS = (0.90, 0.95, 0.99)
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def singular_values(model: nn.Module, normalise: bool = True) -> dict[str, torch.Tensor]:
    """Per conv/linear layer, σ of W.reshape(C_out, -1), descending (divided by σ_max if asked)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _LAYER_TYPES) and isinstance(m.weight, torch.Tensor):
            w = m.weight.detach().double()
            s = torch.linalg.svdvals(w.reshape(w.shape[0], -1))
            if normalise and s[0] > 0:
                s = s / s[0]
            out[name] = s
    if not out:
        raise TunelessError(f"{type(model).__name__} has no conv or linear layers to analyse")
    return out


def energy_rank(s: torch.Tensor, level: float) -> int:
    """The smallest rank whose singular values hold `level` of Σσ²."""
    if not 0 < level <= 1:
        raise TunelessError(f"energy level must be in (0, 1], got {level}")
    e = s.double().pow(2)
    if e.sum() == 0:
        return 0
    cum = torch.cumsum(e, 0) / e.sum()
    return min(len(s), int((cum < level - 1e-12).sum()) + 1)


def spectral_rows(model: nn.Module, levels: Sequence[float] = LEVELS) -> list[dict]:
    """One row per layer: shape, full and break-even rank, and the rank for each energy level."""
    rows = []
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules()
              if isinstance(m, _LAYER_TYPES)}
    for name, s in singular_values(model).items():
        shape = shapes[name]
        o, rest = shape[0], math.prod(shape[1:])
        row = {"layer": name, "shape": "×".join(map(str, shape)), "params": o * rest,
               "full_rank": len(s), "break_even": round(o * rest / (o + rest), 1)}
        for level in levels:
            row[f"r{round(level * 100)}"] = energy_rank(s, level)
        rows.append(row)
    return rows


def summary_row(label: str, rows: list[dict], levels: Sequence[float] = LEVELS) -> dict:
    """Parameter-weighted mean of rank/full rank per level, and the share of layers below
    break-even at that level (the ones SVD could shrink keeping that energy)."""
    total = sum(r["params"] for r in rows)
    out = {"model": label, "layers": len(rows)}
    for level in levels:
        key = f"r{round(level * 100)}"
        out[f"rank/full @{key[1:]}%"] = sum(r[key] / r["full_rank"] * r["params"]
                                            for r in rows) / total
        below = sum(r[key] < r["break_even"] for r in rows)
        out[f"below break-even @{key[1:]}%"] = below / len(rows)
    return out


def spectral_markdown(models: dict[str, nn.Module], levels: Sequence[float] = LEVELS) -> str:
    """A summary table (one row per model) and a per-layer table of the rank for each level."""
    from tuneless.report import render_markdown

    per_model = {label: spectral_rows(m, levels) for label, m in models.items()}
    summary = [summary_row(label, rows, levels) for label, rows in per_model.items()]
    first = next(iter(per_model.values()))
    layer_rows = []
    for i, base in enumerate(first):
        row = {"layer": base["layer"], "shape": base["shape"], "full": base["full_rank"],
               "break-even": base["break_even"]}
        for label, rows in per_model.items():
            if i < len(rows) and rows[i]["layer"] == base["layer"]:
                row[label] = "/".join(str(rows[i][f"r{round(lv * 100)}"]) for lv in levels)
        layer_rows.append(row)
    lv = "/".join(f"{round(x * 100)}" for x in levels)
    return (
        "Rank needed for a share of each layer's energy Σσ² (σ of W.reshape(C_out, -1)).\n\n"
        + render_markdown(summary) + "\n\n"
        + f"Per layer: rank for {lv}% energy.\n\n" + render_markdown(layer_rows) + "\n"
    )


def plot_spectra(models: dict[str, nn.Module], path: str | os.PathLike,
                 max_layers: int = 12) -> list[str]:
    """Normalised singular-value curves, one panel per layer (evenly chosen), one line per model.

    Returns the layers plotted. The PNG is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spectra = {label: singular_values(m) for label, m in models.items()}
    names = list(next(iter(spectra.values())))
    if len(names) > max_layers:
        idx = sorted({round(i * (len(names) - 1) / (max_layers - 1)) for i in range(max_layers)})
        names = [names[i] for i in idx]
    cols = min(4, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for label, spec in spectra.items():
            if name in spec:
                s = spec[name].numpy()
                ax.semilogy([(i + 1) / len(s) for i in range(len(s))], s.clip(1e-6), label=label)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("rank / full rank", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("σ / σ_max", fontsize=7)
    axes.flat[0].legend(fontsize=7)
    save_figure(fig, path, dpi=110)
    return names


__all__ = ["LEVELS", "energy_rank", "plot_spectra", "singular_values", "spectral_markdown",
           "spectral_rows", "summary_row"]
