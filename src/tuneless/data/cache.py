"""A decoded-tensor cache: decoding 60k JPEGs takes a minute, loading the cache a second."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from tuneless.io_atomic import atomic_torch_save


def cache_dir() -> Path:
    """Where decoded datasets live; override with TUNELESS_CACHE."""
    root = os.environ.get("TUNELESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tuneless"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def source_key(path: Path) -> str:
    """A key that changes when the source changes (path, size, mtime)."""
    st = path.stat()
    text = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached(name: str, path: Path, build):
    """Return build() for this source, computing it once and caching it on disk."""
    file = cache_dir() / f"{name}-{source_key(path)}.pt"
    if file.exists():
        try:
            return torch.load(file, weights_only=True)
        except Exception:  # a truncated cache is rebuilt, never trusted
            file.unlink(missing_ok=True)
    value = build()
    atomic_torch_save(value, file)
    return value
