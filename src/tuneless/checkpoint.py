"""Training checkpoints: architecture, arguments, dataset, accuracy and weights hash in one file."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from tuneless.errors import TunelessError, first_line
from tuneless.io_atomic import atomic_torch_save

FORMAT = "tuneless-checkpoint/1"


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of the weights themselves, independent of how the file was written."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    arch: str,
    arch_kwargs: dict[str, Any],
    dataset: str,
    train_args: dict[str, Any] | None = None,
    test_accuracy: float | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a model checkpoint atomically; returns the metadata it stored."""
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "dataset": dataset,
        "train_args": dict(train_args or {}),
        "test_accuracy": test_accuracy,
        "weights_sha256": weights_sha256(sd),
        "torch_version": str(torch.__version__),  # TorchVersion would need an unsafe unpickle
    }
    obj = {**meta, "state_dict": sd, **(extra or {})}
    atomic_torch_save(obj, path)
    return meta


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike,
                       dtype: torch.dtype = torch.float16,
                       measure: Callable[[nn.Module], float] | None = None) -> dict[str, Any]:
    """Write `src` again with its floating-point weights stored as `dtype` (half the bytes
    for float16); loading casts them back to the model's float32. The weights hash is
    recomputed and `stored_dtype` records the change. Rounding moves accuracy a little, so
    the float32 figure is not kept: `measure(model)` of the converted model, if given, is
    recorded as its test_accuracy (else none). Never overwrites: dst must not exist."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise TunelessError(f"{dst} already exists; choose a new file")
    if not dtype.is_floating_point:
        raise TunelessError(f"store dtype must be floating point, got {dtype}")
    obj = read_torch_file(src)
    state = checked_state(obj, str(src))
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    too_big = [k for k, v in state.items()
               if v.is_floating_point() and not torch.isfinite(sd[k]).all()]
    if too_big:
        raise TunelessError(f"{src}: {too_big[0]} does not fit in {dtype} (overflow)")
    out = {k: v for k, v in obj.items() if k != "resume"}
    out.update(state_dict=sd, weights_sha256=weights_sha256(sd), test_accuracy=None,
               stored_dtype=str(dtype).removeprefix("torch."))
    if measure is not None:
        out["test_accuracy"] = measure(model_from_checkpoint(out, str(dst)))
    atomic_torch_save(out, dst)
    return {k: v for k, v in out.items() if k != "state_dict"}


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format
PICKLE_PROTO = 0x80  # torch.save's legacy format starts with a pickle protocol opcode


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = first_line(exc)
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True and one-line errors for missing or corrupt files."""
    path = Path(path)
    if not path.exists():
        raise TunelessError(f"{what} not found: {path}")
    if path.is_dir():
        if (path / "config.json").is_file():
            raise TunelessError(f"{path} is a Hugging Face model folder: `tuneless compress` "
                                "and `tuneless eval --task wikitext2` take it; this command "
                                "reads PyTorch model files")
        raise TunelessError(f"{what} path is a directory, expected a file: {path}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise TunelessError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if not head:
        raise TunelessError(f"corrupt {what} {path}: the file is empty")
    if head == b"GGUF":
        raise TunelessError(f"{path} is a GGUF language model: `tuneless compress` and "
                            "`tuneless eval --task wikitext2` take it; this command reads "
                            "PyTorch model files")
    if path.suffix == ".safetensors" and not head.startswith(ZIP_MAGIC):
        raise TunelessError(
            f"{path} is a safetensors file: weights without their architecture; give the "
            "folder that holds it with its config.json (a Hugging Face model)")
    if not head.startswith(ZIP_MAGIC) and head[0] != PICKLE_PROTO:
        raise TunelessError(
            f"corrupt {what} {path}: not a PyTorch file (torch.save writes a zip archive)"
        )
    try:
        # TorchVersion (a str subclass) is in checkpoints written before torch_version was str()'d
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise TunelessError(
                f"{path} contains pickled Python objects (not just tensors); loading it needs the "
                "unsafe path: pass --unsafe-pickle (tuneless.load_model(..., allow_pickle=True)) "
                "only if you trust the file"
            ) from exc
        raise TunelessError(f"corrupt {what} {path}: unreadable pickle data") from exc
    except Exception as exc:  # torch raises many types for damaged files; all mean "corrupt"
        raise TunelessError(f"corrupt {what} {path}: {_one_line(exc)}") from exc


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def checked_state(obj: Any, where: str = "checkpoint", verify: bool = True) -> dict:
    """The state dict of a tuneless checkpoint, after checking its format tag, its fields and
    (verify) the weights against their recorded sha256; one-line errors otherwise."""
    if not is_checkpoint(obj):
        raise TunelessError(f"{where} is not a tuneless checkpoint (no '{FORMAT}' format tag)")
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not isinstance(obj.get("arch"), str):
        raise TunelessError(f"corrupt checkpoint {where}: no 'arch' name or no 'state_dict'")
    if verify and weights_sha256(sd) != obj.get("weights_sha256"):
        raise TunelessError(
            f"corrupt checkpoint {where}: weights do not match their recorded sha256"
        )
    return sd


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> nn.Module:
    """Build the architecture a checkpoint names and load its weights; eval mode."""
    obj = read_torch_file(path)
    return model_from_checkpoint(obj, str(path), verify=verify)


def model_from_checkpoint(obj: dict, where: str = "checkpoint", verify: bool = True) -> nn.Module:
    from tuneless.zoo import build_model

    sd = checked_state(obj, where, verify)
    model = build_model(obj["arch"], **obj.get("arch_kwargs", {}))
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise TunelessError(
            f"checkpoint {where} does not fit architecture {obj['arch']}: {_one_line(exc)}"
        ) from exc
    model.eval()
    model.tuneless_meta = {k: v for k, v in obj.items() if k != "state_dict" and k != "resume"}
    return model
