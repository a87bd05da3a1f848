"""save/load round-trips compressed models to identical outputs; bad files are one-liners."""

import pytest
import torch
import torch.nn as nn

import tuneless
from tuneless.errors import TunelessError
from tuneless.methods.prune import prune
from tuneless.modelio import build_arch
from tuneless.serialize import load, save

X = torch.randn(2, 3, 32, 32)


def pruned_resnet20():
    model = build_arch("resnet20").eval()
    return prune(model, sparsity=0.5, example_inputs=X).eval()


def test_pruned_model_round_trips_without_pickle(tmp_path):
    small = pruned_resnet20()
    info = save(small, tmp_path / "s.pt", meta={"note": "test"})
    assert info["mode"] == "reference" and "layer1.0.conv1" in info["changed_modules"]
    back = load(tmp_path / "s.pt")
    assert torch.equal(back(X), small(X))
    assert back.layer1[0].conv1.out_channels == small.layer1[0].conv1.out_channels
    assert back.tuneless_report["achieved_sparsity"] == small.tuneless_report["achieved_sparsity"]
    # the file is plain data: it loads with weights_only=True
    obj = torch.load(tmp_path / "s.pt", weights_only=True)
    assert obj["arch"]["ref"] == "zoo:resnet20" and obj["meta"] == {"note": "test"}


def test_conv_replaced_by_two_convs_round_trips(tmp_path):
    small = pruned_resnet20()
    c = small.layer2[1].conv1
    small.layer2[1].conv1 = nn.Sequential(
        nn.Conv2d(c.in_channels, 5, 3, 1, 1, bias=False), nn.Conv2d(5, c.out_channels, 1))
    tuneless.save(small, tmp_path / "svd.pt")
    back = tuneless.load(tmp_path / "svd.pt")
    assert isinstance(back.layer2[1].conv1, nn.Sequential)
    assert torch.equal(back(X), small(X))
    # saving the loaded model again works too (the reference travels with it)
    save(back, tmp_path / "again.pt")
    assert torch.equal(load(tmp_path / "again.pt")(X), small(X))


def test_custom_module_with_resized_parameter_round_trips(tmp_path):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.scale = nn.Parameter(torch.rand(8, 1, 1))
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc((self.conv(x) * self.scale).mean((2, 3)))

    import types
    mod = types.ModuleType("tl_test_scaled")
    mod.Scaled = Scaled
    Scaled.__module__ = "tl_test_scaled"
    import sys
    sys.modules["tl_test_scaled"] = mod
    model = build_arch("tl_test_scaled:Scaled", trust_code=True).eval()
    small = prune(model, channel_ratio=0.5, example_inputs=X)
    assert small.scale.shape == (4, 1, 1)
    save(small, tmp_path / "c.pt")
    assert torch.equal(load(tmp_path / "c.pt", trust_code=True)(X), small(X))


def test_model_without_reference_falls_back_to_pickle(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with pytest.warns(UserWarning, match="pickled"):
        info = save(model, tmp_path / "p.pt")
    assert info["mode"] == "pickle"
    with pytest.raises(TunelessError, match="allow_pickle=True"):
        load(tmp_path / "p.pt")
    back = load(tmp_path / "p.pt", allow_pickle=True)
    assert torch.equal(back(X), model(X))


def test_corrupt_and_foreign_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(TunelessError, match="corrupt"):
        load(bad)
    foreign = tmp_path / "sd.pt"
    torch.save({"w": torch.ones(2)}, foreign)
    with pytest.raises(TunelessError, match="not a model saved by tuneless"):
        load(foreign)
    with pytest.raises(TunelessError, match="not found"):
        load(tmp_path / "missing.pt")
    small = pruned_resnet20()
    save(small, tmp_path / "ok.pt")
    obj = torch.load(tmp_path / "ok.pt", weights_only=True)
    obj["state_dict"]["conv1.weight"] += 1
    torch.save(obj, tmp_path / "tampered.pt")
    with pytest.raises(TunelessError, match="sha256"):
        load(tmp_path / "tampered.pt")


def test_same_model_saved_twice_is_byte_identical(tmp_path):
    """The sha256 of a saved file identifies the model (no temporary names, no timestamps)."""
    small = pruned_resnet20()
    save(small, tmp_path / "a.pt", meta={"k": 1})
    save(small, tmp_path / "b.pt", meta={"k": 1})
    save(load(tmp_path / "a.pt"), tmp_path / "c.pt", meta={"k": 1})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "c.pt").read_bytes()
