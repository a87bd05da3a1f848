"""CIFAR-10 from an ImageFolder directory, a .tar.gz of one, or the official python batches."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from tuneless.data.cache import cached
from tuneless.errors import TunelessError

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _decode(data: bytes) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TunelessError("decoding image files needs Pillow: pip install pillow") from exc
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _stack(items: list[tuple[str, str, bytes]], split: str, where: str) -> dict:
    """items: (class name, file name, encoded bytes) -> uint8 NCHW tensor + labels."""
    classes = sorted({c for c, _, _ in items})
    if not classes:
        raise TunelessError(f"no images for split '{split}' in {where}")
    index = {c: i for i, c in enumerate(classes)}
    items.sort(key=lambda t: (t[0], t[1]))
    images = [_decode(b) for _, _, b in items]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise TunelessError(f"images in {where}/{split} have different sizes: {sorted(shapes)[:3]}")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([index[c] for c, _, _ in items], dtype=torch.int64)
    return {"x": x, "y": y, "classes": classes}


def _from_folder(root: Path, split: str) -> dict:
    split_dir = root / split
    if not split_dir.is_dir():
        raise TunelessError(
            f"{root} is not an ImageFolder dataset: expected a '{split}/<class>/*.jpg' folder"
        )
    items = []
    for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        for f in sorted(cls_dir.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((cls_dir.name, f.name, f.read_bytes()))
    return _stack(items, split, str(root))


def _from_tar(path: Path, split: str) -> dict:
    items = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                if not m.isfile() or not m.name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                parts = Path(m.name).parts
                if split not in parts[:-2]:
                    continue
                pos = parts.index(split)
                if len(parts) - pos != 3:
                    continue
                fh = tar.extractfile(m)
                items.append((parts[pos + 1], parts[pos + 2], fh.read()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TunelessError(f"cannot read the archive {path}: {exc}") from exc
    if not items:
        raise TunelessError(
            f"{path} holds no '{split}/<class>/<image>' files: not a CIFAR ImageFolder archive"
        )
    return _stack(items, split, str(path))


def _from_batches(root: Path, split: str) -> dict:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        f = root / name
        if not f.exists():
            raise TunelessError(f"CIFAR-10 python batches in {root}: missing file '{name}'")
        try:
            with open(f, "rb") as fh:
                d = pickle.load(fh, encoding="latin1")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.extend(d["labels"])
        except Exception as exc:
            raise TunelessError(f"corrupt CIFAR-10 batch file {f}: {exc}") from exc
    return {
        "x": torch.from_numpy(np.concatenate(xs)),
        "y": torch.tensor(ys, dtype=torch.int64),
        "classes": list(CIFAR10_CLASSES),
    }


def load_cifar10(path: str | Path, split: str = "train", cache: bool = True) -> dict:
    """Load a CIFAR-10 split as {"x": uint8 N×3×32×32, "y": int64 N, "classes": [...]}.

    `path` may be an ImageFolder root (train/, test/), a .tar.gz of one, or the
    `cifar-10-batches-py` folder (or its parent).
    """
    if split not in ("train", "test"):
        raise TunelessError(f"split must be 'train' or 'test', got {split!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise TunelessError(f"CIFAR-10 data not found: {path} does not exist")
    if path.is_file():
        loader = _from_tar
    elif (path / "cifar-10-batches-py").is_dir():
        path, loader = path / "cifar-10-batches-py", _from_batches
    elif (path / "data_batch_1").exists() or (path / "test_batch").exists():
        loader = _from_batches
    else:
        loader = _from_folder
    if not cache:
        return loader(path, split)
    return cached(f"cifar10-{split}", path, lambda: loader(path, split))
