"""tuneless: make trained PyTorch networks smaller without data and without fine-tuning.

    import tuneless
    small = tuneless.fold(model, sparsity=0.5, repair="ar", example_inputs=x)
    small = tuneless.prune(model, sparsity=0.5, criterion="l1", example_inputs=x)
    small = tuneless.svd(model, sparsity=0.5)
    small = tuneless.compress(model, tuneless.FoldConfig(sparsity=0.5))  # the one verb
    tuneless.save(small, "small.pt"); small = tuneless.load("small.pt")

Public names are imported lazily so `import tuneless` stays fast and optional
dependencies (transformers, scipy, matplotlib) load only when used.
"""

from __future__ import annotations

from tuneless._lazy import lazy_names
from tuneless.errors import TunelessError, UnsupportedModelError

__version__ = "0.1.0"

_LAZY = {
    "compress": "tuneless.api",
    "FoldConfig": "tuneless.api",
    "PruneConfig": "tuneless.api",
    "SVDConfig": "tuneless.api",
    "IFMConfig": "tuneless.api",
    "register_handler": "tuneless.api",
    "load_checkpoint": "tuneless.checkpoint",
    "save_checkpoint": "tuneless.checkpoint",
    "find_groups": "tuneless.graph",
    "reduce": "tuneless.reduce",
    "prune": "tuneless.methods.prune",
    "magnitude_prune": "tuneless.methods.prune",
    "fold": "tuneless.methods.fold",
    "svd": "tuneless.methods.svd",
    "refit": "tuneless.layer_refit",
    "match_bn": "tuneless.bn_match",
    "save": "tuneless.serialize",
    "load": "tuneless.serialize",
    "load_model": "tuneless.modelio",
    "export": "tuneless.export",
    "evaluate": "tuneless.evaluate",
    "accuracy": "tuneless.evaluate",
    "count_params": "tuneless.evaluate",
    "variance_ratio": "tuneless.diagnostics",
    "SmoothPenalty": "tuneless.smooth",
    "register_architecture": "tuneless.trust",
    "register_module": "tuneless.trust",
    "set_progress": "tuneless.progress",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


__all__ = ["TunelessError", "UnsupportedModelError", "__version__", *_LAZY]
