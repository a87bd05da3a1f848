"""Layers that compute their weight in forward (weight standardisation) fold as plain ones."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tuneless
from tuneless.materialize import computed_weight_layers, materialize_weights


class WSConv(nn.Conv2d):
    """Weight-standardised convolution with a gain, as NF-ResNets have it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        w = self.weight.reshape(self.out_channels, -1)
        w = (w - w.mean(1, keepdim=True)) / (w.var(1, unbiased=False, keepdim=True) + 1e-6).sqrt()
        w = w.reshape_as(self.weight) * self.gain
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PaddedWSConv(WSConv):
    """Pads its input before the convolution: not a plain layer, left as it is."""

    def forward(self, x):
        return super().forward(F.pad(x, (1, 0, 1, 0)))


class Net(nn.Module):
    def __init__(self, conv=WSConv):
        super().__init__()
        self.c1, self.c2 = conv(3, 16, 3, padding=1), conv(16, 16, 3, padding=1)
        self.c3 = conv(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(F.relu(self.c3(x)).mean((2, 3)))


def test_weight_standardised_layers_become_plain_ones_with_the_same_outputs():
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    assert computed_weight_layers(model) == ["c1", "c2", "c3"]
    plain = materialize_weights(model, x)
    assert plain is not model and plain.tuneless_materialized == ["c1", "c2", "c3"]
    assert all(type(getattr(plain, n)) is nn.Conv2d for n in ("c1", "c2", "c3"))
    assert isinstance(model.c1, WSConv)  # the user's model is untouched
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-6)


def test_a_layer_that_transforms_its_input_first_is_left_alone():
    model, x = Net(PaddedWSConv).eval(), torch.randn(1, 3, 8, 8)
    assert materialize_weights(model, x) is model


def test_a_model_without_such_layers_is_returned_as_it_is():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    assert materialize_weights(model, torch.randn(1, 3, 8, 8)) is model


@pytest.mark.parametrize("method", ["fold", "prune"])
def test_fold_and_prune_reach_through_weight_standardised_convs(method):
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    run = tuneless.fold if method == "fold" else tuneless.prune
    small = run(model, sparsity=0.3, example_inputs=x)
    report = small.tuneless_report
    assert abs(report["achieved_sparsity"] - 0.3) < 0.03
    assert report["materialized"] == ["c1", "c2", "c3"]
    assert small.c2.in_channels < 16 and small(x).shape == (1, 4)


def test_a_folded_nf_resnet_saves_and_loads(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("nf_resnet26", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    small = tuneless.fold(model, sparsity=0.3, example_inputs=x, allocation="uniform")
    assert len(small.tuneless_report["materialized"]) > 20
    tuneless.save(small, tmp_path / "nf.pt")
    back = tuneless.load(tmp_path / "nf.pt", model=timm.create_model("nf_resnet26", num_classes=10))
    with torch.no_grad():
        assert torch.equal(back(x), small(x))
