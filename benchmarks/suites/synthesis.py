"""DeepInversion images for the data-free benchmark rows, synthesised once per network,
seed and settings and shared by every row that uses them (the synthesis is minutes; the
rows that share it are seconds). Each row adds the synthesis time to its own."""

from __future__ import annotations

import json
import time

import torch

_CACHE: dict = {}


def synthesized(key: str, model, x: torch.Tensor, seed: int,
                settings: dict) -> tuple[torch.Tensor, float]:
    """(images, seconds the synthesis took) of `model` for these settings; `key` names the
    network (one process may benchmark several)."""
    from tuneless.deepinversion import synthesize

    cache_key = (key, seed, json.dumps(settings, sort_keys=True))
    if cache_key not in _CACHE:
        t0 = time.perf_counter()
        images = synthesize(model, x, seed=seed, **settings)
        _CACHE[cache_key] = images, time.perf_counter() - t0
    return _CACHE[cache_key]
