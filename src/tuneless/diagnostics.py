"""Variance collapse, made visible: per-layer Var(folded activation) / Var(original activation).

Averaging channels shrinks activation variance layer after layer; a ratio that
drifts below 1 with depth is the collapse the repairs are meant to undo.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from tuneless.errors import TunelessError
from tuneless.modes import evaluating

LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)


def _channel_variances(model: nn.Module, names: list[str], inputs: torch.Tensor) -> dict:
    out, handles = {}, []
    modules = dict(model.named_modules())
    for name in names:
        def hook(_m, _i, y, name=name):
            y = y.detach().double()
            dims = [0] + list(range(2, y.dim()))
            out[name] = y.var(dims, unbiased=False)
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad(), evaluating(model):
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return out


def variance_ratio(original: nn.Module, folded: nn.Module, inputs: torch.Tensor,
                   layers: tuple[type, ...] = LAYERS) -> dict[str, float]:
    """Per layer (matched by module name, in forward order): mean over channels of the
    folded activation variance divided by the original's.

    Where folding changed the channel count, the ratio is of the channel means
    (mean Var folded / mean Var original); where it did not, the mean of per-channel
    ratios (channels with zero original variance are skipped).
    """
    if not isinstance(inputs, torch.Tensor) or inputs.shape[0] < 2:
        raise TunelessError("variance_ratio needs a batch of at least 2 inputs")
    orig_mods = dict(original.named_modules())
    fold_mods = dict(folded.named_modules())
    names = [n for n, m in orig_mods.items()
             if n and isinstance(m, layers) and isinstance(fold_mods.get(n), layers)]
    if not names:
        raise TunelessError("the two models share no conv, linear or BatchNorm layer by name")
    v_orig = _channel_variances(original, names, inputs)
    v_fold = _channel_variances(folded, names, inputs)
    ratios = {}
    for name in v_orig:  # dict order = forward order
        if name not in v_fold:
            continue
        a, b = v_orig[name], v_fold[name]
        if a.shape == b.shape:
            ok = a > 0
            ratios[name] = float((b[ok] / a[ok]).mean()) if ok.any() else float("nan")
        else:
            ratios[name] = float(b.mean() / a.mean()) if a.mean() > 0 else float("nan")
    return ratios


def plot_variance_ratio(curves: dict[str, dict[str, float]], path: str | Path,
                        title: str = "Variance ratio per layer") -> Path:
    """One line per label (e.g. a repair) over the layers; 1 is ideal. Writes a PNG atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tuneless.io_atomic import atomic_write_bytes

    if not curves:
        raise TunelessError("nothing to plot: no variance-ratio curves given")
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, ratios in curves.items():
        ax.plot(range(len(ratios)), list(ratios.values()), marker=".", label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel("Var folded / Var original")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(buf.getvalue(), path)
    return path
