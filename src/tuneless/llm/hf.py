"""Hugging Face bookkeeping around a rewritten model: GGUF/quantizer markers are dropped
(the weights are plain tensors already: GGUF is dequantised on load, and the marker would
block save_pretrained), and loading a folder with per-layer sizes stays quiet."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def detached_quantizer(model: nn.Module) -> Iterator[None]:
    """The model without its hf_quantizer for the duration (a deepcopy must not copy it)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        model.hf_quantizer = None
    try:
        yield
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer


def plain_copy(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A copy (or the model itself with inplace=True) with quantizer bookkeeping dropped."""
    if inplace:
        new = model
    else:
        with detached_quantizer(model):
            new = copy.deepcopy(model)
    if hasattr(new, "hf_quantizer"):
        new.hf_quantizer = None
    if hasattr(new, "is_quantized"):
        with contextlib.suppress(AttributeError):
            new.is_quantized = False
    if hasattr(new.config, "quantization_config"):
        del new.config.quantization_config
    return new


class _GlobalReadsOfPerLayerFields(logging.Filter):
    """Drops transformers' "Reading global config value for per-layer attribute" warning.

    transformers' own config validation reads every field of a config through the global
    attribute, so loading any folder with per-layer sizes printed it three times, although
    nothing outside transformers read a global size."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "global config value for per-layer attribute" not in record.getMessage()


@contextlib.contextmanager
def quiet_config_validation() -> Iterator[None]:
    """Within it, transformers does not warn about global reads of per-layer config fields."""
    log = logging.getLogger("transformers.integrations.heterogeneity.configuration_utils")
    quiet = _GlobalReadsOfPerLayerFields()
    log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


def model_keys(model: nn.Module, keys, known: set[str]) -> dict[str, str]:
    """{checkpoint key: the model's own name of it}: the key itself if the model has it,
    else the key through transformers' plain renamings of legacy checkpoint names (GPT-NeoX
    saves its lm_head as embed_out), else unchanged. The renamings are read once."""
    import re

    renamings: list[tuple[str, str]] | None = None
    out = {}
    for key in keys:
        out[key] = key
        if key in known:
            continue
        if renamings is None:
            renamings = _renamings(model)
        for src, dst in renamings:
            new = re.sub(src, dst, key)
            if new != key and new in known:
                out[key] = new
                break
    return out


def _renamings(model: nn.Module) -> list[tuple[str, str]]:
    """transformers' (pattern, replacement) renamings of this model's legacy checkpoint keys;
    none where the installed transformers has no such table."""
    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping

        return [(src, dst) for r in get_model_conversion_mapping(model)
                if isinstance(r, WeightRenaming)
                for src, dst in zip(r.source_patterns, r.target_patterns)]
    except Exception:  # noqa: BLE001 — an older or newer transformers: no renamings
        return []
