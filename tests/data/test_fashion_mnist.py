import gzip

import numpy as np
import pytest
import torch

from tuneless.data.fashion_mnist import FASHION_CLASSES, load_fashion_mnist
from tuneless.errors import TunelessError


def test_tiny_folder(tiny_fashion):
    d = load_fashion_mnist(tiny_fashion, "test")
    assert d["x"].shape == (100, 1, 28, 28) and d["x"].dtype == torch.uint8
    assert d["y"].dtype == torch.int64 and d["y"][:12].tolist() == [*range(10), 0, 1]
    assert d["classes"] == FASHION_CLASSES
    assert int(d["x"][3, 0, 2 * 3 + 2, 10]) == 250  # class 3's bar
    assert len(load_fashion_mnist(tiny_fashion, "train")["y"]) == 200


def test_uncompressed_idx_in_a_subfolder(tmp_path, idx_writer):
    sub = tmp_path / "fm" / "raw"
    sub.mkdir(parents=True)
    x = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    idx_writer(sub / "t10k-images-idx3-ubyte", x)
    idx_writer(sub / "t10k-labels-idx1-ubyte", np.array([7, 1]))
    d = load_fashion_mnist(tmp_path / "fm", "test")
    assert torch.equal(d["x"][:, 0], torch.from_numpy(x.astype(np.uint8)))
    assert d["y"].tolist() == [7, 1]


def test_missing_folder(tmp_path):
    with pytest.raises(TunelessError, match="folder not found"):
        load_fashion_mnist(tmp_path / "nope", "test")


def test_missing_file(tiny_fashion):
    (tiny_fashion / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(TunelessError, match="missing idx file 't10k-labels-idx1-ubyte'"):
        load_fashion_mnist(tiny_fashion, "test")


def test_corrupt_idx(tiny_fashion):
    (tiny_fashion / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02junk"))
    with pytest.raises(TunelessError, match="corrupt idx file"):
        load_fashion_mnist(tiny_fashion, "test")


def test_truncated_idx(tiny_fashion):
    f = tiny_fashion / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(raw[:1000]))
    with pytest.raises(TunelessError, match="corrupt idx file"):
        load_fashion_mnist(tiny_fashion, "test")


def test_counts_disagree(tiny_fashion, idx_writer):
    idx_writer(tiny_fashion / "t10k-labels-idx1-ubyte.gz", np.zeros(5))
    with pytest.raises(TunelessError, match="disagree"):
        load_fashion_mnist(tiny_fashion, "test")


def test_bad_split(tiny_fashion):
    with pytest.raises(TunelessError, match="split must be"):
        load_fashion_mnist(tiny_fashion, "validation")
