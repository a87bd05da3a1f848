"""`tuneless inspect` and `tuneless compress` end to end, in process, on the option-A ResNet
(our own code with random weights: public pretrained weights cannot be downloaded here)."""

import pytest
import torch
from option_a_resnet import resnet20

from tuneless.cli import main
from tuneless.errors import TunelessError
from tuneless.serialize import load

X = torch.randn(2, 3, 32, 32)


def state_dict_file(tmp_path):
    torch.manual_seed(0)
    model = resnet20().eval()
    path = tmp_path / "resnet20_a.th"  # the layout of public CIFAR ResNet checkpoints
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               path)
    return model, path


ARCH = ["--arch", "option_a_resnet:resnet20", "--input-shape", "3,32,32"]


def test_inspect_names_the_padding_op(tmp_path, capsys):
    _, path = state_dict_file(tmp_path)
    assert main(["inspect", str(path), *ARCH]) == 0
    out = capsys.readouterr().out
    assert "F.pad" in out and "appends zero channels" in out
    assert "16 groups: 10 reducible" in out


def test_compress_option_a_resnet_to_half(tmp_path, capsys):
    model, path = state_dict_file(tmp_path)
    out_file = tmp_path / "small.pt"
    rc = main(["compress", str(path), *ARCH, "--method", "prune-l1", "--sparsity", "0.5",
               "-o", str(out_file)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "achieved sparsity" in text and "before" in text and "after" in text
    small = load(out_file, trust_code=True)  # the file names option_a_resnet:resnet20
    assert 0.49 <= small.tuneless_report["achieved_sparsity"] <= 0.51
    n0 = sum(p.numel() for p in model.parameters())
    n1 = sum(p.numel() for p in small.parameters())
    assert 0.49 <= 1 - n1 / n0 <= 0.51
    assert small(X).shape == model(X).shape
    same = tmp_path / "same.pt"  # removing nothing is a mistake on the command line
    assert main(["compress", str(path), *ARCH, "--method", "prune-l2", "--channel-ratio", "0",
                 "-o", str(same)]) == 1
    assert "removed nothing" in capsys.readouterr().err and not same.exists()
    with pytest.raises(TunelessError, match="refusing to import architecture"):
        load(out_file)


def test_cli_errors_are_one_line(tmp_path, capsys):
    _, path = state_dict_file(tmp_path)
    assert main(["inspect", str(path)]) == 1
    assert "--arch" in capsys.readouterr().err
    assert main(["compress", str(path), *ARCH, "--method", "nope", "--sparsity", "0.5",
                 "-o", str(tmp_path / "x.pt")]) == 1
    assert "unknown method" in capsys.readouterr().err
    assert main(["compress", str(path), *ARCH, "--method", "prune-l1", "--sparsity", "0.5",
                 "-o", str(path)]) == 1
    assert "overwrite the input" in capsys.readouterr().err
    assert main(["compress", str(path), *ARCH, "--method", "magnitude", "--sparsity", "0.5",
                 "-o", str(tmp_path / "m.pt")]) == 0
    assert "not physically smaller" in capsys.readouterr().out


def test_zoo_checkpoint_needs_no_input_shape(tmp_path, capsys):
    from tuneless.checkpoint import save_checkpoint
    from tuneless.zoo import build_model

    model = build_model("lenet5").eval()
    save_checkpoint(tmp_path / "lenet.pt", model, "lenet5", {}, "fashion-mnist")
    assert main(["inspect", str(tmp_path / "lenet.pt")]) == 0
    assert "6 groups: 4 reducible" in capsys.readouterr().out
    out = tmp_path / "small.pt"
    assert main(["compress", str(tmp_path / "lenet.pt"), "--method", "prune-l1",
                 "--sparsity", "0.4", "--option", "round_to=2", "-o", str(out)]) == 0
    small = load(out)
    assert abs(small.tuneless_report["achieved_sparsity"] - 0.4) <= 0.01
    assert small.features[0].out_channels % 2 == 0
    assert small(torch.randn(1, 1, 28, 28)).shape == (1, 10)
