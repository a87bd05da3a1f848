"""Torch-Pruning (PyPI `torch-pruning`) as a peer in the fold benchmark, on equal terms.

Torch-Pruning's MetaPruner removes the same fraction of channels from every prunable
group (its `pruning_ratio`); the fold benchmark compares at a *parameter* budget, so the
ratio is bisected until the pruned network holds as few parameters as tuneless's result
at the same sparsity (within one bisection step). No fine-tuning; the classifier stays
whole, as in tuneless. Criteria: L1 and L2 filter norms (MagnitudeImportance), BN scale
(|γ|, BNScaleImportance) and first-order Taylor (TaylorImportance: |w·∂L/∂w| from labelled
repair images, the only one that uses labels).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from tuneless.errors import TunelessError

CRITERIA = ("l1", "l2", "bn", "taylor")


def _importance(tp, criterion: str):
    imp = tp.importance
    return {"l1": lambda: imp.MagnitudeImportance(p=1),
            "l2": lambda: imp.MagnitudeImportance(p=2),
            "bn": lambda: imp.BNScaleImportance(),
            "taylor": lambda: imp.TaylorImportance()}[criterion]()


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The last Linear (its outputs are the classes): never pruned, by either library."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _gradients(model, labelled) -> dict[str, torch.Tensor]:
    """∂L/∂w of the cross-entropy on the labelled images, once (Taylor's only data use)."""
    m = copy.deepcopy(model).eval()
    images, labels = labelled
    with torch.enable_grad():
        for i in range(0, len(images), 128):
            nn.functional.cross_entropy(m(images[i:i + 128]), labels[i:i + 128]).backward()
    return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


def _fixed_producers(model: nn.Module, x: torch.Tensor) -> set[str]:
    """Modules writing channel groups tuneless's graph keeps whole (e.g. zero-padded
    residual streams): the channels neither library may prune, for the fallback below."""
    from tuneless.graph import find_groups

    return {s.module for g in find_groups(model, x) if not g.reducible for s in g.producers}


def _prune_once(model, ratio, criterion, x, grads, keep: set[str] = frozenset()):
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()
    ignored = _classifier(m) + [mod for name, mod in m.named_modules() if name in keep]
    pruner = tp.pruner.MetaPruner(m, x, importance=_importance(tp, criterion),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    for k, p in m.named_parameters():
        if grads and k in grads:
            p.grad = grads[k].clone()
    pruner.step()
    m.zero_grad(set_to_none=True)
    return m.eval()


def tp_prune(model: nn.Module, sparsity: float, criterion: str, example_inputs: torch.Tensor,
             labelled: tuple[torch.Tensor, torch.Tensor] | None = None,
             steps: int = 14) -> nn.Module:
    """Torch-Pruning's `criterion` at the channel ratio whose parameter count is closest to
    removing `sparsity` of the parameters (the budget tuneless's methods solve for)."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError as exc:
        raise TunelessError("the Torch-Pruning rows need torch-pruning: "
                            "pip install 'tuneless[bench]'") from exc
    if criterion not in CRITERIA:
        raise TunelessError(f"unknown Torch-Pruning criterion {criterion!r}")
    if criterion == "taylor" and labelled is None:
        raise TunelessError("Taylor importance needs labelled images")
    grads = _gradients(model, labelled) if criterion == "taylor" else None
    best = _bisect(model, sparsity, criterion, example_inputs, grads, steps, frozenset())
    if not _runs(model, best, example_inputs):
        # Torch-Pruning's known trap: a zero-padding (option-A) shortcut couples channels
        # wrongly and the pruned network does not run. Leave the groups tuneless keeps
        # whole (the padded residual streams) to neither library, and prune the rest.
        keep = _fixed_producers(model, example_inputs)
        best = _bisect(model, sparsity, criterion, example_inputs, grads, steps, keep)
        if not _runs(model, best, example_inputs):
            raise TunelessError("Torch-Pruning's pruned network does not run, even with the "
                                "residual streams left whole")
        best.tp_note = f"residual streams left whole ({len(keep)} layers ignored)"
    return best


def _bisect(model, sparsity, criterion, x, grads, steps, keep) -> nn.Module:
    total = sum(p.numel() for p in model.parameters())
    target = (1 - sparsity) * total
    lo, hi, tried = 0.0, 0.99, []
    for _ in range(steps):
        mid = (lo + hi) / 2
        pruned = _prune_once(model, mid, criterion, x, grads, keep)
        n = sum(p.numel() for p in pruned.parameters())
        tried.append((abs(n - target), mid, pruned))
        if n <= target:
            hi = mid
        else:
            lo = mid
    return min(tried, key=lambda t: (t[0], t[1]))[2]


@torch.no_grad()
def _runs(model: nn.Module, pruned: nn.Module, x: torch.Tensor) -> bool:
    try:
        return pruned(x).shape == model(x).shape
    except RuntimeError:
        return False


__all__ = ["CRITERIA", "tp_prune"]
