"""Shared test set-up: one CPU thread, a fixed seed, and a tiny Fashion-MNIST-format folder."""

import gzip
import struct

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array in the idx format (gzip if the name ends in .gz)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim,
                                                                    *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(data)


@pytest.fixture
def idx_writer():
    """write_idx, for tests that build their own idx files."""
    return write_idx


@pytest.fixture
def tiny_fashion(tmp_path):
    """A learnable 10-class Fashion-MNIST-format folder: 200 train and 100 test images.

    Class c is a bright horizontal bar at rows 2c..2c+3, so a small model learns it fast.
    """
    root = tmp_path / "fashion"
    root.mkdir()
    rng = np.random.default_rng(0)
    for n, stem in ((200, "train"), (100, "t10k")):
        y = np.arange(n) % 10
        x = rng.integers(0, 40, size=(n, 28, 28))
        for i, c in enumerate(y):
            x[i, 2 * c + 2 : 2 * c + 6, 4:24] = 250
        write_idx(root / f"{stem}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{stem}-labels-idx1-ubyte.gz", y)
    return root
