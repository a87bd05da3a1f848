"""MODEL given as torchvision:NAME / timm:NAME on the command line, with or without downloaded
weights (the download is stubbed: this machine is offline, users are not)."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from tuneless.cli import main


def test_untrained_torchvision_model_compresses_and_saves_without_pickle(tmp_path):
    import tuneless

    out = tmp_path / "r18.pt"
    assert main(["compress", "torchvision:resnet18", "--method", "fold-ar", "--sparsity", "0.3",
                 "--input-shape", "3,64,64", "-o", str(out)]) == 0
    small = tuneless.load(out)  # rebuilt from the recorded builder, no pickle
    assert small.tuneless_arch["ref"] == "torchvision:resnet18"
    assert "weights" not in small.tuneless_arch["kwargs"]
    assert small(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_weights_enum_is_downloaded_through_torchvision(tmp_path, monkeypatch):
    import torchvision

    seen = []
    real = torchvision.models.get_model

    def fake_get_model(name, **kwargs):  # what a download would give: known weights
        seen.append(kwargs.get("weights"))
        model = real(name, weights=None)
        torch.manual_seed(7)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.05)
        return model

    monkeypatch.setattr(torchvision.models, "get_model", fake_get_model)
    out = tmp_path / "m.pt"
    assert main(["compress", "torchvision:resnet18", "--weights", "DEFAULT", "--method",
                 "prune-l1", "--sparsity", "0.3", "--input-shape", "3,64,64", "-o",
                 str(out)]) == 0
    assert seen[0] == "DEFAULT"  # then the saver rebuilds the bare architecture
    assert all(w is None for w in seen[1:])


@pytest.mark.parametrize("ref, target", [("torchvision:resnet18", "torchvision.models"),
                                         ("timm:resnet18", "timm")])
def test_offline_download_is_one_line(ref, target, tmp_path, monkeypatch, capsys):
    module = pytest.importorskip(target)
    name = "get_model" if target == "torchvision.models" else "create_model"

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(module, name, offline)
    weights = "DEFAULT" if ref.startswith("torchvision") else "pretrained"
    assert main(["compress", ref, "--weights", weights, "--method", "fold-ar", "--sparsity",
                 "0.3", "-o", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot fetch" in err and "without internet" in err and len(err.splitlines()) == 1


def test_weights_without_a_reference_is_refused(tmp_path, capsys):
    assert main(["compress", "models/mlp-fashion-mnist.pt", "--weights", "DEFAULT", "--method",
                 "fold-ar", "--sparsity", "0.3", "-o", str(tmp_path / "x.pt")]) == 1
    assert "--weights goes with" in capsys.readouterr().err


def test_eval_of_an_untrained_reference_reports_size_and_flops(capsys):
    assert main(["eval", "torchvision:mobilenet_v2", "--input-shape", "3,64,64",
                 "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "torchvision:mobilenet_v2" in out and "3.5M" in out


def test_grouped_conv_model_from_the_command_line(tmp_path, capsys):
    """RegNet's grouped convs: inspect names the blocks, compress shrinks them evenly."""
    import tuneless

    assert main(["inspect", "torchvision:regnet_x_400mf", "--input-shape", "3,64,64"]) == 0
    assert "reducible in 2 blocks" in capsys.readouterr().out
    out = tmp_path / "regnet.pt"
    assert main(["compress", "torchvision:regnet_x_400mf", "--method", "prune-l1",
                 "--sparsity", "0.3", "--input-shape", "3,64,64", "-o", str(out)]) == 0
    small = tuneless.load(out)
    conv = small.trunk_output.block1[0].f.b[0]
    assert conv.groups == 2 and conv.in_channels % 2 == 0 and conv.in_channels < 32


def test_a_timm_model_brings_its_own_input_size(capsys):
    """timm records each model's input size in its pretrained configuration: no
    --input-shape needed (vit_tiny_patch16_384 runs only at 384 × 384)."""
    pytest.importorskip("timm")
    from tuneless.arch import build_arch
    from tuneless.modelio import default_input_shape

    assert default_input_shape(build_arch("timm:vit_tiny_patch16_384")) == (3, 384, 384)
    assert main(["eval", "timm:resnet18", "--no-latency"]) == 0
    assert "input 3,224,224" in capsys.readouterr().out


def test_models_built_outside_tuneless_bring_their_input_size_too():
    import torchvision

    from tuneless.modelio import default_input_shape

    timm = pytest.importorskip("timm")
    assert default_input_shape(timm.create_model("vit_tiny_patch16_384")) == (3, 384, 384)
    assert default_input_shape(torchvision.models.mobilenet_v2()) == (3, 224, 224)
    assert default_input_shape(torchvision.models.video.r3d_18()) is None  # not an image
    assert default_input_shape(torch.nn.Linear(3, 3)) is None


def test_a_saved_network_brings_the_dataset_and_input_shape_it_records(tmp_path, capsys):
    """A network built elsewhere and saved with meta={"dataset": ...} compresses without
    --input-shape, and its output keeps what the input recorded."""
    import tuneless
    from tuneless.commands.eval import guess_dataset
    from tuneless.modelio import default_input_shape

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(),
                              torch.nn.BatchNorm2d(16), torch.nn.Flatten(),
                              torch.nn.Linear(16 * 26 * 26, 10)).eval()
    tuneless.save(net, tmp_path / "ext.pt", meta={"dataset": "fashion-mnist"})
    assert main(["compress", str(tmp_path / "ext.pt"), "--method", "fold", "--sparsity", "0.3",
                 "-o", str(tmp_path / "small.pt")]) == 0
    small = tuneless.load(tmp_path / "small.pt")
    assert small.tuneless_saved_meta["dataset"] == "fashion-mnist"
    assert default_input_shape(small) == (1, 28, 28) and guess_dataset(small) == "fashion-mnist"
    tuneless.save(net, tmp_path / "shape.pt", meta={"input_shape": [1, 30, 30]})
    assert default_input_shape(tuneless.load(tmp_path / "shape.pt")) == (1, 30, 30)
    tuneless.save(net, tmp_path / "other.pt", meta={"dataset": "imagenet"})  # not one we know
    other = tuneless.load(tmp_path / "other.pt")
    assert default_input_shape(other) is None and guess_dataset(other) == "fashion-mnist"
    capsys.readouterr()
