from pathlib import Path

import pytest
import torch

from tuneless.data import loader
from tuneless.data.loader import (
    NORMALISATION,
    TensorDataset,
    TensorLoader,
    default_data_path,
    get_dataset,
    random_crop_flip,
)
from tuneless.errors import TunelessError


def dataset(n=10, c=3, h=8):
    x = torch.randint(0, 256, (n, c, h, h), dtype=torch.uint8)
    return TensorDataset("cifar10", x, torch.arange(n) % 3, ["a", "b", "c"],
                         *NORMALISATION["cifar10"])


def test_crop_flip_shapes_and_determinism():
    x = dataset(16).x
    a = random_crop_flip(x, 4, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, 4, torch.Generator().manual_seed(1))
    c = random_crop_flip(x, 4, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_flip_pad0_is_identity_or_mirror():
    x = dataset(32).x
    out = random_crop_flip(x, 0, torch.Generator().manual_seed(0))
    same = [torch.equal(o, i) for o, i in zip(out, x)]
    mirrored = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert any(same) and any(mirrored)  # both happen with p = 0.5


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).reshape(2, 1, 6, 6)
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for o, p in zip(out, padded):
        windows = [p[:, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(o, w) or torch.equal(o, w.flip(-1)) for w in windows)


def test_loader_batches_shuffle_and_normalise():
    d = dataset(10)
    plain = list(TensorLoader(d, 4))
    assert [len(y) for _, y in plain] == [4, 4, 2]
    assert len(TensorLoader(d, 4, drop_last=True)) == 2
    x0, y0 = plain[0]
    assert x0.dtype == torch.float32 and torch.equal(y0, d.y[:4])
    mean = torch.tensor(d.mean).view(1, 3, 1, 1)
    std = torch.tensor(d.std).view(1, 3, 1, 1)
    assert torch.allclose(x0, (d.x[:4].float() / 255 - mean) / std)
    ys = torch.cat([y for _, y in TensorLoader(d, 4, shuffle=True, seed=5)])
    assert sorted(ys.tolist()) == sorted(d.y.tolist())
    again = torch.cat([y for _, y in TensorLoader(d, 4, shuffle=True, seed=5)])
    assert torch.equal(ys, again)
    aug = next(iter(TensorLoader(d, 4, augment=True, pad=2)))[0]
    assert aug.shape == x0.shape


def test_loader_bad_batch_size():
    with pytest.raises(TunelessError, match="batch_size"):
        TensorLoader(dataset(), 0)


def test_subset_and_tensors():
    d = dataset(10)
    s = d.subset(4, seed=1)
    assert len(s) == 4 and torch.equal(s.y, d.subset(4, seed=1).y)
    assert len(d.subset(100)) == 10
    x, y = d.tensors(3)
    assert x.shape == (3, 3, 8, 8) and torch.equal(y, d.y[:3])


def test_training_view_augments_like_training():
    d = dataset(10)
    assert torch.equal(d.training_view(None), d.tensors()[0])
    a, b = d.training_view(2, seed=3), d.training_view(2, seed=3)
    assert a.shape == (10, 3, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a, d.tensors()[0])
    expected = d.normalise(random_crop_flip(d.x, 2, torch.Generator().manual_seed(3)))
    assert torch.equal(a, expected)
    with pytest.raises(TunelessError, match="pad"):
        d.training_view(-1)


def test_get_dataset(tiny_fashion):
    d = get_dataset("fashion-mnist", "test", tiny_fashion)
    assert d.name == "fashion-mnist" and d.mean == NORMALISATION["fashion-mnist"][0]
    with pytest.raises(TunelessError, match="unknown dataset"):
        get_dataset("mnist", "test", tiny_fashion)


def test_cifar_needs_a_path(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELESS_CIFAR10", str(tmp_path / "missing.tar.gz"))
    monkeypatch.setattr("tuneless.data.loader.default_data_path", lambda name: None)
    with pytest.raises(TunelessError, match="no CIFAR-10 data given"):
        get_dataset("cifar10", "test")


def test_default_path_from_env_and_upward_search(monkeypatch, tmp_path):
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(b"")
    monkeypatch.setenv("TUNELESS_CIFAR10", str(archive))
    assert default_data_path("cifar10") == archive
    monkeypatch.delenv("TUNELESS_CIFAR10")
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "cifar10-jpeg.tar.gz").write_bytes(b"")
    deep = tmp_path / "clone" / "sub"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    # pretend the package is installed somewhere with no shared/ above it
    monkeypatch.setattr(loader, "__file__", str(tmp_path / "site" / "a" / "b" / "loader.py"))
    assert default_data_path("cifar10") == shared / "cifar10-jpeg.tar.gz"
    monkeypatch.setenv("TUNELESS_FASHION_MNIST", "/x/y")
    assert default_data_path("fashion-mnist") == Path("/x/y")


def test_repair_data_that_cannot_give_a_right_model_is_refused():
    """NaN images gave a NaN model and uint8 images BN statistics of 0..255 pixels, both
    silently; images with another channel count failed deep inside a convolution."""
    import torch.nn as nn

    import tuneless
    from tuneless.data.loader import check_images_fit, image_batches

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 2)).eval()
    x = torch.randn(1, 3, 12, 12)
    cases = [(torch.full((8, 3, 12, 12), float("nan")), "NaN or Inf"),
             (torch.randint(0, 255, (8, 3, 12, 12), dtype=torch.uint8), "torch.uint8 images"),
             (torch.randn(8, 1, 12, 12), r"\(1, 12, 12\) per image do not fit the model's "
                                         r"input \(3, 12, 12\)")]
    for repair in ("data", "refit"):
        for data, message in cases:
            with pytest.raises(TunelessError, match=message):
                tuneless.fold(net, sparsity=0.3, repair=repair, data=data, example_inputs=x)
    small = tuneless.prune(net, sparsity=0.3, example_inputs=x)
    with pytest.raises(TunelessError, match="do not fit the model's input"):
        tuneless.refit(net, small, torch.randn(8, 1, 12, 12), example_inputs=x)
    check_images_fit(torch.randn(8, 3, 20, 20), x)  # other sizes are the model's business
    check_images_fit(iter([torch.randn(8, 1, 12, 12)]), x)  # one-shot iterators: not peeked
    assert len(list(image_batches(torch.randn(8, 3, 12, 12), 4))) == 2
