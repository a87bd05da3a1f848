"""Hugging Face image classifiers as tuneless models.

A transformers model folder whose config.json names a `*ForImageClassification`
architecture loads as an `ImageClassifier`: the transformers model inside, its logits
tensor as the output (what evaluation, export and latency measure). No code from the folder
runs (`trust_remote_code=False`: only transformers' own classes). A compressed copy is saved
with the architecture reference `transformers:image-classification` and the config, so
`tuneless.load` rebuilds it from transformers without pickle. The engine traces these
models with tuneless.graph.value_trace (their forward checks shapes in Python).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneless.errors import TunelessError, first_line

REF = "transformers:image-classification"


class ImageClassifier(nn.Module):
    """A transformers image classifier returning its logits (N, classes) for pixel values."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config = getattr(model, "config", None)
        if hasattr(config, "to_dict"):  # what tuneless.save records to rebuild it
            self.tuneless_arch = {"ref": REF, "kwargs": {"config": config.to_dict()}}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        if "logits" in out:
            return out["logits"]
        # a few heads (PPLCNet) return the classifier's output as last_hidden_state
        logits = out[0]
        labels = getattr(self.model.config, "num_labels", None)
        if logits.dim() != 2 or logits.shape[-1] != labels:
            raise TunelessError(
                f"{type(self.model).__name__} returned no logits (its first output is shaped "
                f"{tuple(logits.shape)}, not (batch, {labels}))")
        return logits


# forward parameters that mean a classifier needs more than a (N, C, H, W) pixel tensor
_OTHER_INPUTS = {"input_ids": "a text prompt (input_ids)",
                 "spatial_shapes": "its images cut into patch sequences (spatial_shapes)"}


def check_pixel_classifier(model) -> None:
    """Refuse, in one line, a classifier (class or instance) whose forward needs more than
    pixel values: what tuneless compresses, evaluates and exports is a function of an image
    tensor. Checked on the class before any weights are built where it can be."""
    import inspect

    cls = model if isinstance(model, type) else type(model)
    try:
        params = inspect.signature(cls.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return
    needs = [why for name, why in _OTHER_INPUTS.items() if name in params]
    if "pixel_values" not in params and not any(
            p.kind is p.VAR_KEYWORD for p in params.values()):
        needs.append("inputs other than pixel_values")
    if needs:
        raise TunelessError(f"{cls.__name__} needs {', '.join(needs)}, not only an "
                            "image tensor: tuneless compresses classifiers of pixel values")


def _check_config(tf, cfg) -> None:
    """check_pixel_classifier on the class this config would build, if transformers says."""
    try:
        classes = tf.AutoModelForImageClassification._model_mapping[type(cfg)]
    except Exception:  # noqa: BLE001 — no such mapping in this version: checked after build
        return
    if isinstance(classes, (tuple, list)):  # several (DeiT, LeViT): transformers picks by
        named = [c for c in classes if c.__name__ in (cfg.architectures or ())]  # name
        classes = named[0] if named else classes[0]
    if isinstance(classes, type):
        check_pixel_classifier(classes)


def _architectures(folder: Path) -> list[str]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return []
    names = config.get("architectures") if isinstance(config, dict) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def is_image_classifier_folder(path: str | os.PathLike) -> bool:
    """A folder with a config.json naming a transformers image-classification architecture."""
    folder = Path(path)
    return folder.is_dir() and any(n.endswith("ForImageClassification")
                                   for n in _architectures(folder))


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        from tuneless.cli import missing_dependency

        raise TunelessError(missing_dependency("transformers")) from exc
    return transformers


def load_image_classifier(path: str | os.PathLike) -> ImageClassifier:
    """The folder's classifier with its weights, in eval mode, ready for tuneless.save."""
    tf = _transformers()
    try:
        cfg = tf.AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        _check_config(tf, cfg)
        inner = tf.AutoModelForImageClassification.from_pretrained(
            str(path), config=cfg, trust_remote_code=False)
    except TunelessError:
        raise
    except Exception as exc:  # missing weights, unknown model_type, custom code
        raise TunelessError(f"cannot load the image classifier in {path}: "
                            f"{first_line(exc, 200)}") from exc
    return _wrap(inner)


def build_image_classifier(config: dict[str, Any]) -> ImageClassifier:
    """An untrained classifier of this transformers config (a saved copy's architecture)."""
    tf = _transformers()
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise TunelessError(f"{REF} needs a transformers config with a model_type")
    settings = {k: v for k, v in config.items() if k != "model_type"}
    try:
        cfg = tf.AutoConfig.for_model(config["model_type"], **settings)
        _check_config(tf, cfg)
        inner = tf.AutoModelForImageClassification.from_config(cfg, trust_remote_code=False)
    except TunelessError:
        raise
    except Exception as exc:  # noqa: BLE001 — an unknown model_type or a bad field
        raise TunelessError(f"cannot build {REF} ({config['model_type']}): "
                            f"{first_line(exc, 200)}") from exc
    return _wrap(inner)


def _wrap(inner: nn.Module) -> ImageClassifier:
    check_pixel_classifier(inner)
    return ImageClassifier(inner.eval()).eval()


def input_shape(config: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of the config's images (num_channels, image_size; 3 × 224 × 224 unset)."""
    size = config.get("image_size") or 224
    h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
    return int(config.get("num_channels") or 3), int(h), int(w)
