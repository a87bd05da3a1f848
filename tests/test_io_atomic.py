import os
import stat

import pytest
import torch

from tuneless.io_atomic import atomic_torch_save, atomic_write_text


def test_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text("one", path)
    atomic_write_text("two", path)
    assert path.read_text() == "two"
    assert os.listdir(path.parent) == ["a.txt"]


def test_mode_follows_umask_not_mkstemp(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text("x", tmp_path / "a.txt")
        atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.pt"
    atomic_torch_save({"w": torch.ones(2)}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"x": Unsaveable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["m.pt"]
