"""Batched loading and augmentation of in-memory uint8 image tensors.

Keeping the whole dataset as one uint8 tensor and augmenting a batch at a time
in torch is several times faster on a small CPU than a per-image DataLoader.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tuneless.errors import TunelessError

NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}
DATASETS = tuple(NORMALISATION)


@dataclass
class TensorDataset:
    """Images as uint8 N×C×H×W plus labels, with the normalisation that goes with them."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.y)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x.float().div_(255.0) - mean) / std

    def subset(self, n: int, seed: int = 0) -> TensorDataset:
        """A random subset of n examples (for calibration or quick checks)."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[: min(n, len(self))]
        return TensorDataset(self.name, self.x[idx], self.y[idx], self.classes, self.mean, self.std)

    def tensors(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n examples, normalised, as (float images, labels)."""
        n = len(self) if n is None else min(n, len(self))
        return self.normalise(self.x[:n]), self.y[:n]

    def training_view(self, pad: int | None, seed: int = 0) -> torch.Tensor:
        """All images normalised as `tuneless train` feeds them: random crop after `pad`
        pixels of zero padding and a random flip (pad None: no augmentation).

        BatchNorm statistics re-estimated on plain images do not match the ones a network
        learned on augmented batches (ResNet-20: −2.9 points without any compression), so
        data repairs should see the training view.
        """
        if pad is None:
            return self.normalise(self.x)
        if pad < 0:
            raise TunelessError(f"pad must be ≥ 0, got {pad}")
        return self.normalise(random_crop_flip(self.x, pad, torch.Generator().manual_seed(seed)))


def recipe_pad(train_args: dict | None) -> int | None:
    """The crop padding a `tuneless train` recipe (a checkpoint's train_args) augmented with,
    or None when it did not augment (or no recipe is recorded)."""
    train_args = train_args or {}
    return int(train_args.get("pad", 4)) if train_args.get("augment", False) else None


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding, and a random horizontal flip, for a uint8 batch."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = oy[:, None] + torch.arange(h)
    cols = ox[:, None] + torch.arange(w)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = xp[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class TensorLoader:
    """Iterate (float images, labels) batches; shuffles and augments when asked."""

    def __init__(
        self,
        data: TensorDataset,
        batch_size: int = 128,
        shuffle: bool = False,
        augment: bool = False,
        pad: int = 4,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise TunelessError(f"batch_size must be at least 1, got {batch_size}")
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.augment, self.pad, self.drop_last = augment, pad, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.data)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.data.x[idx]
            if self.augment:
                x = random_crop_flip(x, self.pad, self.generator)
            yield self.data.normalise(x), self.data.y[idx]


# name -> (environment variable, file under shared/data/ beside the repository or None)
DEFAULT_PATHS = {
    "cifar10": ("TUNELESS_CIFAR10", "cifar10-jpeg.tar.gz"),
    "fashion-mnist": ("TUNELESS_FASHION_MNIST", None),
    "wikitext2": ("TUNELESS_WIKITEXT2", "wikitext-2-raw/wiki.test.raw"),
}


def default_data_path(name: str) -> Path | None:
    """Where to look for a dataset when the user gives no path: its environment variable,
    else shared/data/ beside the repository (CI's layout), looked for upward from the source
    tree and from the working directory, wherever the clone is."""
    if name not in DEFAULT_PATHS:
        return None
    var, rel = DEFAULT_PATHS[name]
    env = os.environ.get(var)
    if env or rel is None:
        return Path(env) if env else None
    here = Path(__file__).resolve()
    for parent in [*list(here.parents)[:6], *Path.cwd().resolve().parents, Path.cwd()]:
        c = parent / "shared" / "data" / rel
        if c.exists():
            return c
    return None


def get_dataset(name: str, split: str = "train", path: str | Path | None = None) -> TensorDataset:
    """Load a named dataset split with its standard normalisation."""
    from tuneless.data.cifar import load_cifar10
    from tuneless.data.fashion_mnist import load_fashion_mnist

    if name not in NORMALISATION:
        raise TunelessError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    path = path if path is not None else default_data_path(name)
    if name == "cifar10":
        if path is None:
            raise TunelessError(
                "no CIFAR-10 data given: pass --data PATH (ImageFolder, .tar.gz or "
                "cifar-10-batches-py) or set TUNELESS_CIFAR10"
            )
        d = load_cifar10(path, split)
    else:
        d = load_fashion_mnist(path, split)
    mean, std = NORMALISATION[name]
    return TensorDataset(name, d["x"], d["y"], d["classes"], mean, std)


def _check_image_batch(x: torch.Tensor) -> None:
    """Repair data that cannot give a right model: integer images (a repair measures
    statistics of what the model is fed, and tuneless cannot know the normalisation the
    model was trained with) and NaN / Inf values."""
    if not x.is_floating_point():
        raise TunelessError(f"repair data are {x.dtype} images: give them as the model is fed "
                            "(floats, normalised as in training)")
    if not bool(torch.isfinite(x).all()):
        raise TunelessError("repair data hold NaN or Inf values")


def check_images_fit(data, example) -> None:
    """One line when the first batch of repair data has another rank or channel count than
    the model's example input (a tensor or a one-tensor tuple; other spatial sizes are left
    to the model). Only tensors, TensorDatasets and DataLoaders are peeked at: a one-shot
    iterator is left alone."""
    from torch.utils.data import DataLoader

    if not isinstance(data, torch.Tensor | TensorDataset | TensorLoader | DataLoader):
        return
    if isinstance(example, tuple | list) and len(example) == 1:
        example = example[0]
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        return
    first = next(image_batches(data, 2, 2), None)
    if first is None:
        return
    if first.dim() != example.dim() or first.shape[1] != example.shape[1]:
        raise TunelessError(f"repair data of shape {tuple(first.shape[1:])} per image do not fit "
                            f"the model's input {tuple(example.shape[1:])}")


def image_batches(data, batch_size: int = 128, limit: int | None = None) -> Iterator[torch.Tensor]:
    """Float image batches from a tensor, a (x, y) DataLoader, a TensorDataset or a TensorLoader."""
    if isinstance(data, TensorDataset):
        data = TensorLoader(data, batch_size)
    if isinstance(data, torch.Tensor):
        if data.dim() < 2 or data.shape[0] == 0:
            raise TunelessError("repair data must be a non-empty batch of images (N × ...)")
        source: Iterable = data.split(batch_size)
    elif isinstance(data, Iterable):
        source = data
    else:
        raise TunelessError(
            f"repair data must be a tensor of images or a DataLoader, got {type(data).__name__}"
        )
    seen = 0
    for batch in source:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, dict):
            raise TunelessError("repair data batches must be image tensors, not dicts")
        if not isinstance(x, torch.Tensor):
            raise TunelessError(f"repair data yielded {type(x).__name__}, expected image tensors")
        if limit is not None:
            x = x[: limit - seen]
        if len(x) == 0:
            break
        _check_image_batch(x)
        yield x.float()
        seen += len(x)
        if limit is not None and seen >= limit:
            break
