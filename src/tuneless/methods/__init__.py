"""Compression methods by CLI name. Each decides what to remove; the engine rewrites the model.

REGISTRY maps a method name to "module:function"; the function takes
(model, *, example_inputs=None, **options) and returns a new, smaller model.
Modules register here lazily so one broken optional dependency cannot hide the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tuneless.errors import TunelessError

REGISTRY: dict[str, str] = {
    # structured pruning (tuneless.methods.prune)
    "prune-l1": "tuneless.methods.prune:prune_l1",
    "prune-l2": "tuneless.methods.prune:prune_l2",
    "prune-random": "tuneless.methods.prune:prune_random",
    "magnitude": "tuneless.methods.prune:magnitude_prune",
    # folding (tuneless.methods.fold); "fold" = the default repair of the model kind
    "fold": "tuneless.methods.fold:fold",
    "fold-naive": "tuneless.methods.fold:fold_naive",
    "fold-ar": "tuneless.methods.fold:fold_ar",
    "fold-dir": "tuneless.methods.fold:fold_dir",
    "fold-r": "tuneless.methods.fold:fold_r",
    "fold-match": "tuneless.methods.fold:fold_match",
    "fold-refit": "tuneless.methods.fold:fold_refit",
    "fold-self": "tuneless.methods.fold:fold_self",
    "ifm": "tuneless.methods.ifm:ifm",
    # low rank (tuneless.methods.svd)
    "svd": "tuneless.methods.svd:svd",
    "fold+svd": "tuneless.methods.fold_svd:fold_svd",
}


def check_options(name: str, options: dict) -> None:
    """Type- and range-check a method's options before loading data or models for it.

    A method function either declares its options as keyword parameters, or (fold) keeps
    them in an options dataclass named by its `options_class` attribute.
    """
    from tuneless.options import check_call, check_dataclass

    func, spec = _declaration(name)
    if spec is not None:
        check_dataclass(spec, options, name)
    else:
        check_call(func, options, name)


def accepts_option(name: str, key: str) -> bool:
    """Whether method `name` declares option `key` (not merely takes **kwargs)."""
    import inspect

    func, spec = _declaration(name)
    if spec is not None:
        return key in spec.__dataclass_fields__
    return key in inspect.signature(func).parameters


def _declaration(name: str):
    """(the function behind a registry method, its options dataclass or None)."""
    func = get_method(name)
    func = getattr(func, "__wrapped_method__", func)
    return func, getattr(func, "options_class", None)


def get_method(name: str) -> Callable:
    if name not in REGISTRY:
        raise TunelessError(f"unknown method {name!r}; choose one of: {', '.join(REGISTRY)}")
    module, func = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), func)
