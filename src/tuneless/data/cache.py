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
    """A key that changes when the source changes: path, size and mtime of a file, or of
    every file under a folder (editing one image inside an ImageFolder changes the key)."""
    st = path.stat()
    text = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    if path.is_dir():
        parts = [text]
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            fs = f.stat()
            parts.append(f"{f.relative_to(path)}|{fs.st_size}|{fs.st_mtime_ns}")
        text = "\n".join(parts)
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
