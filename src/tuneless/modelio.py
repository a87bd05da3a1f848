"""Load a model the way users hold it: a tuneless file, a pickled module, or a state_dict + arch.

Every model loaded here carries `model.tuneless_arch = {"ref": ..., "kwargs": {...}}`
(when an architecture is known), so `tuneless.save` can store compressed copies as
"architecture reference + changed modules + weights" instead of an unsafe pickle.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import torch.nn as nn

from tuneless.arch import build_arch
from tuneless.errors import TunelessError

__all__ = ["build_arch", "default_input_shape", "example_input", "load_model", "parse_kwargs",
           "parse_input_shape"]


def parse_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        out = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TunelessError(f"architecture arguments are not valid JSON: {exc}") from exc
    if not isinstance(out, dict):
        raise TunelessError("architecture arguments must be a JSON object, e.g. '{\"width\": 2}'")
    return out


def load_model(path: str | os.PathLike, arch: str | None = None,
               arch_kwargs: dict[str, Any] | str | None = None,
               allow_pickle: bool = False, trust_code: bool = False) -> nn.Module:
    """Load MODEL: a tuneless checkpoint/saved model, a pickled nn.Module, a state_dict, or
    a transformers image-classifier folder (tuneless.hf_vision).

    A state_dict needs `arch` (the caller's own choice, so its import path is honoured).
    Files are read with weights_only=True; a pickled module needs allow_pickle=True and an
    import path named inside a file needs trust_code=True (only for files you trust).
    """
    from tuneless.checkpoint import is_checkpoint, model_from_checkpoint, read_torch_file
    from tuneless.serialize import FORMAT as MODEL_FORMAT
    from tuneless.serialize import model_from_saved

    if isinstance(arch_kwargs, str):
        arch_kwargs = parse_kwargs(arch_kwargs)
    if os.path.isdir(path):
        from tuneless.hf_vision import is_image_classifier_folder, load_image_classifier

        if is_image_classifier_folder(path):
            return load_image_classifier(path)
        raise TunelessError(f"{path} is a folder but not a transformers image classifier "
                            "(config.json naming a *ForImageClassification architecture)")
    try:
        obj = read_torch_file(path, what="model file")
    except TunelessError as exc:
        if not (allow_pickle and "unsafe path" in str(exc)):
            raise
        obj = _unsafe_load(path)
    if is_checkpoint(obj):
        model = model_from_checkpoint(obj, str(path))
        model.tuneless_arch = {"ref": f"zoo:{obj['arch']}", "kwargs": dict(obj["arch_kwargs"])}
        return model
    if isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT:
        original = None
        if obj.get("mode") == "structure" and arch:  # saved without a reference: --arch
            original = build_arch(arch, arch_kwargs or {}, trust_code=True)
        return model_from_saved(obj, str(path), allow_pickle=allow_pickle,
                                trust_code=trust_code, model=original)
    if isinstance(obj, nn.Module):  # allowed pickle: saved the same way (serialize.save)
        obj.tuneless_pickled = True
        return obj.eval()
    state = _find_state_dict(obj)
    if state is None:
        raise TunelessError(f"{path} holds neither a model nor a state_dict of tensors")
    if not arch:
        raise TunelessError(
            f"{path} is a bare state_dict: say which architecture it belongs to with --arch "
            "(a zoo name, torchvision:NAME or pkg.module:Class)")
    model = build_arch(arch, arch_kwargs or {}, trust_code=True)
    _load_state(model, state, arch, path)
    return model.eval()


def _unsafe_load(path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling arbitrary files fails in arbitrary ways
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TunelessError(f"cannot unpickle {path}: {reason}") from exc


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict):
        if obj and all(isinstance(k, str) for k in obj) and all(
                isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in ("state_dict", "model", "model_state_dict", "net", "weights"):
            if key in obj:
                found = _find_state_dict(obj[key])
                if found is not None:
                    return found
    return None


def _load_state(model: nn.Module, state: dict, arch: str, path) -> None:
    expected = set(model.state_dict())
    if not expected & set(state):  # DataParallel / Lightning prefixes
        for prefix in ("module.", "model.", "net."):
            stripped = {k.removeprefix(prefix): v for k, v in state.items()}
            if expected & set(stripped):
                state = stripped
                break
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise TunelessError(f"{path} does not fit architecture {arch}: {detail[:300]}") from exc


def default_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """(C, H, W) the model expects, if its architecture says so (zoo models, torchvision
    classifiers, timm models' pretrained configuration, transformers image classifiers),
    also for models built outside tuneless, or if it was saved with meta={"input_shape":
    [C, H, W]} or {"dataset": NAME}."""
    from tuneless.zoo import ARCH_DATASET, INPUT_SHAPE

    ref = (getattr(model, "tuneless_arch", None) or {}).get("ref", "")
    meta_arch = (getattr(model, "tuneless_meta", None) or {}).get("arch")
    name = ref.removeprefix("zoo:") if ref.startswith("zoo:") else meta_arch
    if name in ARCH_DATASET:
        return INPUT_SHAPE[ARCH_DATASET[name]]
    module = type(model).__module__
    if ref.startswith("torchvision:") or (module.startswith("torchvision.models.")
                                         and module.count(".") == 2):  # classifiers only
        return (3, 224, 224)
    if ref.startswith("timm:") or module.startswith("timm."):  # their pretrained config's size
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if isinstance(size, (tuple, list)) and size and all(isinstance(v, int) for v in size):
            return tuple(size)
    if ref == "transformers:image-classification":
        from tuneless.hf_vision import input_shape

        return input_shape(model.tuneless_arch["kwargs"].get("config") or {})
    saved = getattr(model, "tuneless_saved_meta", None) or {}  # tuneless.save(..., meta=)
    shape = saved.get("input_shape")
    if isinstance(shape, (tuple, list)) and shape and all(
            isinstance(v, int) and v > 0 for v in shape):
        return tuple(shape)
    return INPUT_SHAPE.get(saved.get("dataset"))


def example_input(model: nn.Module, input_shape: tuple[int, ...] | str | None = None,
                  batch: int = 1) -> torch.Tensor:
    """A fixed random example input; shape from the argument or the model's architecture."""
    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    shape = input_shape or default_input_shape(model)
    if shape is None:
        raise TunelessError(
            "the input shape of this model is unknown: give example_inputs "
            "(or --input-shape C,H,W on the command line)")
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, *shape, generator=g)


def parse_input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise TunelessError(f"bad input shape {text!r}: expected positive integers like 3,32,32")
    return shape


__all__ = ["build_arch", "default_input_shape", "example_input", "load_model",
           "parse_input_shape", "parse_kwargs"]
