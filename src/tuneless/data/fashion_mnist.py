"""Fashion-MNIST from the standard idx files (Debian's dataset-fashion-mnist, or any folder)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from tuneless.errors import TunelessError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(root: Path, stem: str) -> Path:
    for suffix in ("", ".gz"):
        for cand in root.rglob(stem + suffix):
            return cand
    raise TunelessError(f"Fashion-MNIST folder {root}: missing idx file '{stem}' (or '{stem}.gz')")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte idx file")
        shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise TunelessError(f"corrupt idx file {path}: {exc}") from exc


def load_fashion_mnist(path: str | Path | None = None, split: str = "train") -> dict:
    """Load a split as {"x": uint8 N×1×28×28, "y": int64 N, "classes": [...]}."""
    if split not in _FILES:
        raise TunelessError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(path).expanduser() if path else DEFAULT_DIR
    if not root.is_dir():
        hint = " (apt-get install dataset-fashion-mnist)" if path is None else ""
        raise TunelessError(f"Fashion-MNIST folder not found: {root}{hint}")
    img_stem, lbl_stem = _FILES[split]
    x = _read_idx(_find(root, img_stem))
    y = _read_idx(_find(root, lbl_stem))
    if x.ndim != 3 or len(x) != len(y):
        raise TunelessError(
            f"Fashion-MNIST files in {root} disagree: {x.shape} images, {y.shape} labels"
        )
    return {
        "x": torch.from_numpy(x.copy()).unsqueeze(1),
        "y": torch.from_numpy(y.astype(np.int64)),
        "classes": list(FASHION_CLASSES),
    }
