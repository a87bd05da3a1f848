import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from tuneless.data.cifar import CIFAR10_CLASSES, load_cifar10
from tuneless.errors import TunelessError

CLASSES = ["cat", "dog", "frog"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELESS_CACHE", str(tmp_path / "cache"))


def make_folder(root, per_class=2, size=8):
    """An ImageFolder with PNGs (lossless, so pixels can be checked exactly)."""
    pixels = {}
    for split in ("train", "test"):
        for ci, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for j in range(per_class):
                arr = np.full((size, size, 3), 10 * ci + j, dtype=np.uint8)
                arr[0, 0] = (ci, j, 255)
                Image.fromarray(arr).save(d / f"{j:04d}.png")
                pixels[(split, cls, j)] = arr
    return pixels


def test_image_folder(tmp_path):
    pixels = make_folder(tmp_path / "cf")
    d = load_cifar10(tmp_path / "cf", "test")
    assert d["x"].shape == (6, 3, 8, 8) and d["x"].dtype == torch.uint8
    assert d["classes"] == CLASSES
    assert d["y"].tolist() == [0, 0, 1, 1, 2, 2]
    expect = torch.from_numpy(pixels[("test", "dog", 1)]).permute(2, 0, 1)
    assert torch.equal(d["x"][3], expect)


def test_tar_gz_matches_folder(tmp_path):
    make_folder(tmp_path / "cf")
    tgz = tmp_path / "cf.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "cf", arcname="cifar10")
    a = load_cifar10(tmp_path / "cf", "train", cache=False)
    b = load_cifar10(tgz, "train", cache=False)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    assert b["classes"] == CLASSES


def make_batches(root, n=4):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(root / name, "wb") as fh:
            pickle.dump({"data": data, "labels": list(range(n))}, fh)
    return root


def test_python_batches(tmp_path):
    make_batches(tmp_path / "cifar-10-batches-py")
    train = load_cifar10(tmp_path, "train", cache=False)  # the parent folder works too
    test = load_cifar10(tmp_path / "cifar-10-batches-py", "test", cache=False)
    assert train["x"].shape == (20, 3, 32, 32) and test["x"].shape == (4, 3, 32, 32)
    assert test["y"].tolist() == [0, 1, 2, 3]
    assert train["classes"] == CIFAR10_CLASSES
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as fh:
        raw = pickle.load(fh)["data"]
    assert torch.equal(test["x"][1].reshape(-1), torch.from_numpy(raw[1]))


def test_cache_is_used_and_keyed_on_source(tmp_path):
    make_folder(tmp_path / "cf")
    first = load_cifar10(tmp_path / "cf", "test")
    files = list((tmp_path / "cache").glob("cifar10-test-*.pt"))
    assert len(files) == 1
    again = load_cifar10(tmp_path / "cf", "test")
    assert torch.equal(first["x"], again["x"])
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    # editing one image inside the folder changes the key: the stale cache is not used
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(
        tmp_path / "cf" / "test" / "cat" / "0000.png")
    changed = load_cifar10(tmp_path / "cf", "test")
    assert changed["x"][0].sum() == 0 and not torch.equal(changed["x"], first["x"])
    files = sorted((tmp_path / "cache").glob("cifar10-test-*.pt"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2
    # a truncated cache file is rebuilt, not trusted
    files[-1].write_bytes(b"garbage")
    rebuilt = load_cifar10(tmp_path / "cf", "test")
    assert torch.equal(changed["x"], rebuilt["x"])


@pytest.mark.parametrize("split", ["val", "TEST"])
def test_bad_split(tmp_path, split):
    with pytest.raises(TunelessError, match="split must be"):
        load_cifar10(tmp_path, split)


def test_missing_path(tmp_path):
    with pytest.raises(TunelessError, match="does not exist"):
        load_cifar10(tmp_path / "nope", "test")


def test_folder_without_split(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(TunelessError, match="expected a 'test/<class>/\\*.jpg' folder"):
        load_cifar10(tmp_path / "random", "test", cache=False)


def test_empty_split(tmp_path):
    (tmp_path / "cf" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(TunelessError, match="no images"):
        load_cifar10(tmp_path / "cf", "test", cache=False)


def test_mixed_image_sizes(tmp_path):
    make_folder(tmp_path / "cf")
    Image.new("RGB", (5, 5)).save(tmp_path / "cf" / "test" / "cat" / "big.png")
    with pytest.raises(TunelessError, match="different sizes"):
        load_cifar10(tmp_path / "cf", "test", cache=False)


def test_archive_without_images(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    tgz = tmp_path / "a.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(tmp_path / "a.txt", arcname="a.txt")
    with pytest.raises(TunelessError, match="not a CIFAR ImageFolder archive"):
        load_cifar10(tgz, "test", cache=False)


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(TunelessError, match="cannot read the archive"):
        load_cifar10(bad, "test", cache=False)


def test_batches_missing_and_corrupt(tmp_path):
    root = make_batches(tmp_path / "b")
    (root / "data_batch_3").unlink()
    with pytest.raises(TunelessError, match="missing file 'data_batch_3'"):
        load_cifar10(root, "train", cache=False)
    (root / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(TunelessError, match="corrupt CIFAR-10 batch file"):
        load_cifar10(root, "test", cache=False)
