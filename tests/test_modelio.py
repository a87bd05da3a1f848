"""load_model: checkpoints, saved models, state_dicts + --arch, pickles; example inputs."""

import pytest
import torch
import torch.nn as nn

from tuneless.checkpoint import save_checkpoint
from tuneless.errors import TunelessError
from tuneless.modelio import build_arch, example_input, load_model, parse_input_shape
from tuneless.zoo import build_model


def test_tuneless_checkpoint_gets_an_architecture_reference(tmp_path):
    model = build_model("lenet5").eval()
    save_checkpoint(tmp_path / "c.pt", model, "lenet5", {}, "fashion-mnist")
    back = load_model(tmp_path / "c.pt")
    assert back.tuneless_arch == {"ref": "zoo:lenet5", "kwargs": {}}
    x = example_input(back)
    assert x.shape == (1, 1, 28, 28) and torch.equal(back(x), model(x))


def test_state_dict_with_arch_prefixes_and_nesting(tmp_path):
    model = build_model("resnet20", width=0.5).eval()
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "best_prec1": 91.7}, tmp_path / "w.th")
    back = load_model(tmp_path / "w.th", arch="resnet20", arch_kwargs='{"width": 0.5}')
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(back(x), model(x))
    assert back.tuneless_arch == {"ref": "zoo:resnet20", "kwargs": {"width": 0.5}}
    with pytest.raises(TunelessError, match="--arch"):
        load_model(tmp_path / "w.th")
    with pytest.raises(TunelessError, match="does not fit architecture resnet32"):
        load_model(tmp_path / "w.th", arch="resnet32", arch_kwargs={"width": 0.5})


def test_torchvision_and_import_path_architectures(tmp_path):
    tv = build_arch("torchvision:resnet18", {"num_classes": 7})
    assert tv.fc.out_features == 7 and tv.tuneless_arch["ref"] == "torchvision:resnet18"
    seq = build_arch("torch.nn:Linear", {"in_features": 3, "out_features": 2})
    assert isinstance(seq, nn.Linear)
    torch.save(seq.state_dict(), tmp_path / "lin.pt")
    back = load_model(tmp_path / "lin.pt", arch="torch.nn:Linear",
                      arch_kwargs='{"in_features": 3, "out_features": 2}')
    assert torch.equal(back.weight, seq.weight)
    with pytest.raises(TunelessError, match="cannot import"):
        build_arch("no_such_pkg.mod:Thing", trust_code=True)
    with pytest.raises(TunelessError, match="not valid JSON"):
        load_model(tmp_path / "lin.pt", arch="torch.nn:Linear", arch_kwargs="{oops")
    with pytest.raises(TunelessError, match="cannot build"):
        build_arch("torchvision:not_a_model")


def test_pickled_module_needs_the_unsafe_flag(tmp_path):
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(TunelessError, match="unsafe"):
        load_model(tmp_path / "whole.pt")
    back = load_model(tmp_path / "whole.pt", allow_pickle=True)
    assert torch.equal(back[0].weight, model[0].weight)


def test_garbage_and_input_shapes(tmp_path):
    (tmp_path / "g.pt").write_bytes(b"\x00garbage")
    with pytest.raises(TunelessError, match="corrupt"):
        load_model(tmp_path / "g.pt")
    torch.save({"a": 1}, tmp_path / "d.pt")
    with pytest.raises(TunelessError, match="neither a model nor a state_dict"):
        load_model(tmp_path / "d.pt")
    assert parse_input_shape("3,64,64") == (3, 64, 64)
    with pytest.raises(TunelessError, match="bad input shape"):
        parse_input_shape("3,-1")
    with pytest.raises(TunelessError, match="input shape of this model is unknown"):
        example_input(nn.Linear(2, 2))
    assert example_input(nn.Linear(2, 2), "2").shape == (1, 2)
