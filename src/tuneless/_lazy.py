"""Lazy public names for a package, and modules that are also callable.

`import tuneless` must stay fast and must not pull in optional dependencies, so
public names resolve on first use. Where a module and the function it exports
share a name (`tuneless.evaluate`, `tuneless.reduce`, `tuneless.llm.perplexity`),
importing the module makes Python bind the package attribute to the module; making
that module callable keeps `tuneless.evaluate(...)` working either way.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable


def lazy_names(package: str, names: dict[str, str]) -> tuple[Callable, Callable]:
    """(__getattr__, __dir__) for `package` that import names[attr] on first access."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted([*vars(sys.modules[package]), *names])

    return __getattr__, __dir__


def make_module_callable(module_name: str, function_name: str | None = None) -> None:
    """Calling the module calls its function of the same (or the given) name."""
    module = sys.modules[module_name]
    attr = function_name or module_name.rsplit(".", 1)[-1]

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, attr)(*args, **kwargs)

    module.__class__ = _CallableModule
