"""Fold, then factor what remains: folding removes redundant channels, SVD the redundant
directions of the layers left; at high compression the two together keep more accuracy
than either alone (measured in docs/smooth-svd.md).

    small = tuneless.methods.fold_svd.fold_svd(model, sparsity=0.9, fold_sparsity=0.3)
"""

from __future__ import annotations

import torch.nn as nn

from tuneless.errors import TunelessError
from tuneless.evaluate import count_params


def fold_svd(model: nn.Module, *, sparsity: float, fold_sparsity: float = 0.3,
             example_inputs=None, data=None, repair: str = "ar", whiten: str = "none",
             seed: int = 0, fold_options: dict | None = None,
             svd_options: dict | None = None) -> nn.Module:
    """Remove `sparsity` of the parameters: `fold_sparsity` of them by tuneless.fold (with
    `repair`), the rest by tuneless.svd of the folded model (with `whiten`). The result's
    report holds both steps' reports."""
    from tuneless.methods.fold import fold
    from tuneless.methods.svd import svd

    for name, value in (("sparsity", sparsity), ("fold_sparsity", fold_sparsity)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise TunelessError(f"{name} must be a number in [0, 1), got {value!r}")
    if fold_sparsity >= sparsity:
        raise TunelessError(f"fold_sparsity ({fold_sparsity}) must be below sparsity "
                            f"({sparsity}): SVD removes the rest")
    before = count_params(model)
    folded = model
    if fold_sparsity > 0:
        # uniform widths unless told: fold + SVD was measured with them (results/fold-svd-*)
        folded = fold(model, sparsity=fold_sparsity, repair=repair, example_inputs=example_inputs,
                      data=data, seed=seed, **{"allocation": "uniform", **(fold_options or {})})
    rest = 1 - (1 - sparsity) * before / count_params(folded)  # of the folded model
    extra = {"data": data} if whiten == "data" else {}
    small = svd(folded, sparsity=max(0.0, rest), example_inputs=example_inputs, whiten=whiten,
                seed=seed, **extra, **(svd_options or {}))
    after = count_params(small)
    small.tuneless_report = {
        "method": "fold+svd", "requested_sparsity": sparsity,
        "achieved_sparsity": 1 - after / before, "params_before": before,
        "params_after": after, "physically_smaller": True,
        "options": {"fold_sparsity": fold_sparsity, "repair": repair, "whiten": whiten,
                    "seed": seed},
        "fold": getattr(folded, "tuneless_report", None) if folded is not model else None,
        "svd": small.tuneless_report,
    }
    return small
