"""Type- and range-check method options before any work, so `seed=1.5` is an error, not a fold.

Options reach methods from Python and from `--option KEY=VALUE` (JSON-parsed, else a
string). Each method's options are checked against the types its signature (or options
dataclass) declares, plus the ranges in BOUNDS that hold for an option of that name in
every method. The message names the option, what it must be and what it got.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from tuneless.errors import TunelessError

# name -> (lowest, highest, lowest is open?) for numeric options, whatever the method.
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "seed": (0, 2**63 - 1),
    "batch_size": (1, None),
    "min_channels": (1, None),
    "round_to": (1, None),
    "n_init": (1, None),
    "calib_blocks": (1, None),
    "num_images": (1, None),
    "refit_images": (2, None),
    "min_rank": (1, None),
    "ridge": (0, None),
    "keep_floor": (0, 1),
    "auto_budget": (0, None),
    "stream_share": (0, 1),
    "damp": (0, None),
    "block": (1, None),
    "steps": (1, None),
    "calib_samples": (1, None),
    "calib_len": (2, None),  # a sampled sequence is its start token and at least one more
    "calib_skip": (0, None),
    "stats_skip": (0, None),
    "n_samples": (1, None),
    "seq_len": (2, None),
}
# string values an option may take when its type also allows a number
STRING_CHOICES: dict[str, tuple[str, ...]] = {"n_init": ("auto",)}


def check_call(func: Callable, options: dict[str, Any], method: str) -> None:
    """Check `options` against the annotations of `func`'s keyword parameters."""
    hints = _hints(func)
    params = inspect.signature(func).parameters
    for name, value in options.items():
        if name in params and name in hints:
            check_value(name, value, hints[name], method)


def check_names(options: Iterable[str], known: Iterable[str] | Callable, method: str, *,
                set_by_call: dict[str, str] | None = None, suggest: Callable | None = None
                ) -> None:
    """A one-line error for option names `method` does not take (with the closest of the
    known names and of the public verb `suggest`'s own parameters), and for those the call
    itself fills in (set_by_call: name -> what to pass instead), before Python's TypeError
    about an internal function's signature."""
    import difflib

    if callable(known):
        params = inspect.signature(known).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        known = [n for n, p in params.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY]
    known = sorted(set(known) - set(set_by_call or {}))
    for name in options:
        if name in (set_by_call or {}):
            raise TunelessError(f"{method}: give {name} as {set_by_call[name]}")
    unknown = sorted(set(options) - set(known))
    if unknown:
        pool = known + (list(inspect.signature(suggest).parameters) if suggest else [])
        near = {n: difflib.get_close_matches(n, pool, n=1) for n in unknown}
        hints = [f"{n} (did you mean {near[n][0]}?)" if near[n] else n for n in unknown]
        raise TunelessError(f"unknown {method} option(s): {', '.join(hints)}")


def check_dataclass(cls: type, options: dict[str, Any], method: str) -> None:
    """Check `options` against the field types of an options dataclass."""
    hints = _hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for name, value in options.items():
        if name in fields:
            check_value(name, value, hints[name], method)


def check_value(name: str, value: Any, annotation: Any, method: str) -> None:
    if not _fits(value, annotation, name):
        raise TunelessError(f"{method} option {name} must be {_describe(annotation, name)}, "
                            f"got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool) and name in BOUNDS:
        low, high = BOUNDS[name]
        if (low is not None and value < low) or (high is not None and value > high):
            span = (f"at least {low}" if high is None else f"between {low} and {high}")
            raise TunelessError(f"{method} option {name} must be {span}, got {value!r}")


def _hints(obj) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except Exception:  # unresolved forward references: skip type checks, keep bounds
        return {}


def _fits(value: Any, ann: Any, name: str) -> bool:
    if ann is Any or ann is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a, name) for a in typing.get_args(ann))
    if ann is type(None) or ann is None:
        return value is None
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value))
    if ann is str:
        return isinstance(value, str) and (name not in STRING_CHOICES
                                           or value in STRING_CHOICES[name])
    if ann is dict or origin is dict:
        return isinstance(value, dict)
    if origin in (list, tuple, Iterable) or ann in (list, tuple):
        inner = typing.get_args(ann)
        return isinstance(value, list | tuple) and (
            not inner or all(_fits(v, inner[0], name) for v in value))
    if isinstance(ann, type):
        return isinstance(value, ann)
    return True


def _describe(ann: Any, name: str) -> str:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, name) for a in typing.get_args(ann))
    if ann is type(None):
        return "null"
    if ann is str and name in STRING_CHOICES:
        return " or ".join(repr(c) for c in STRING_CHOICES[name])
    words = {bool: "true or false", int: "an integer", float: "a finite number",
             str: "a string", dict: "an object"}
    if ann in words:
        return words[ann]
    if origin in (list, tuple, Iterable):
        return "a list"
    return getattr(ann, "__name__", str(ann))


__all__ = ["BOUNDS", "check_call", "check_dataclass", "check_names", "check_value"]


def int_or_auto(text: str) -> int | str:
    """argparse type of an `N|auto` option (export's --pad-to, the stream's --kmeans-dim):
    "auto" as it is, else an integer (its range is the option's own check)."""
    import argparse

    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or auto, got {text!r}") from None
