"""What a saved file may ask tuneless to build: an allowlist, like `trust_remote_code`.

A model file is data, but tuneless's formats name an architecture (`arch.ref`) and the
types of changed submodules (`modules.*.type`) so they can be rebuilt without pickle.
Resolving an arbitrary `pkg.module:attr` from a file would import and call code chosen
by whoever wrote the file (`os:system` is a valid reference). So names read from a file
resolve only against:
  - the project's zoo (`zoo:resnet20`), torchvision and timm model builders;
  - `nn.Module` classes defined in torch.nn, torchvision, timm, transformers' own models
    (`transformers.models.*`; never `transformers_modules`, where remote code lands) and
    tuneless itself;
  - names the user registered with `register_architecture` / `register_module`.
Anything else needs `trust_code=True` (`--trust-code`), the caller's explicit word.
The working directory is never added to `sys.path`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from tuneless.errors import TunelessError

# Packages whose nn.Module classes a file may name: importing them runs no code a file chose.
TRUSTED_MODULE_PACKAGES = ("torch.nn", "torch.ao.nn", "torchvision", "timm",
                           "transformers.models", "tuneless")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}
_MODULES: dict[str, type] = {}


def register_architecture(name: str, factory: Callable[..., nn.Module]) -> None:
    """Let saved files name `name` as their architecture; `factory(**kwargs)` builds it.

    Use it for your own model classes: `tuneless.register_architecture("mynet", MyNet)`,
    then `tuneless.load` rebuilds files that reference "mynet" (or the class's import path
    "pkg.module:MyNet", which is registered too) without trust_code.
    """
    if not isinstance(name, str) or not name.strip():
        raise TunelessError("register_architecture needs a non-empty name")
    if not callable(factory):
        raise TunelessError(f"register_architecture({name!r}, ...) needs a callable factory")
    _ARCHITECTURES[name.strip()] = factory
    path = import_path(factory)
    if path:
        _ARCHITECTURES.setdefault(path, factory)
    if isinstance(factory, type) and issubclass(factory, nn.Module):
        register_module(factory)


def register_module(cls: type) -> None:
    """Let saved files name this nn.Module class as the type of a changed submodule."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TunelessError(f"register_module needs an nn.Module class, got {cls!r}")
    _MODULES[import_path(cls)] = cls


def import_path(obj: Any) -> str:
    """"pkg.module:Qualname" of a class or function ("" when it has none)."""
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{mod}:{qual}" if mod and qual and "<locals>" not in qual else ""


def registered_architecture(ref: str) -> Callable[..., nn.Module] | None:
    return _ARCHITECTURES.get(ref)


def resolve_import(ref: str, what: str, trust_code: bool, where: str = "") -> Any:
    """The object a "pkg.module:attr" names, imported only when trusted or allowlisted.

    Untrusted, only nn.Module classes from TRUSTED_MODULE_PACKAGES resolve: importing those
    packages runs no code the file chose, and their constructors only build layers.
    """
    mod_name, sep, qual = ref.partition(":")
    if not sep or not _IDENT.match(mod_name) or not _IDENT.match(qual):
        raise TunelessError(f"bad {what} reference {ref!r}: expected pkg.module:Name")
    source = f" named in {where}" if where else ""
    refusal = (f"refusing to import {what} {ref!r}{source}: a file may only name zoo, "
               "torch.nn, torchvision, timm, transformers' models or registered classes; "
               "pass trust_code=True "
               "(--trust-code) only if you trust it, or tuneless.register_architecture it")
    if not (trust_code or _in_packages(mod_name, TRUSTED_MODULE_PACKAGES)):
        raise TunelessError(refusal)
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        hint = " (is its package on PYTHONPATH?)" if isinstance(exc, ImportError) else ""
        raise TunelessError(f"cannot import {what} {ref}: {exc}{hint}") from exc
    if not trust_code and not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise TunelessError(refusal)
    return obj


def resolve_module_type(type_name: str, trust_code: bool, where: str = "") -> type:
    """The nn.Module class a saved module spec names (allowlisted or trusted)."""
    if type_name in _MODULES:
        return _MODULES[type_name]
    cls = resolve_import(type_name, "module type", trust_code, where)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TunelessError(f"module type {type_name!r} in {where or 'the file'} is not an "
                            "nn.Module class")
    return cls


def _in_packages(mod_name: str, packages: tuple[str, ...]) -> bool:
    return any(mod_name == p or mod_name.startswith(p + ".") for p in packages)


__all__ = ["TRUSTED_MODULE_PACKAGES", "import_path", "register_architecture",
           "register_module", "registered_architecture", "resolve_import",
           "resolve_module_type"]
