"""Variance ratio: 1 for an unchanged model, < 1 after naive folding, and a plot file."""

import pytest
import torch

from tuneless.diagnostics import plot_variance_ratio, variance_ratio
from tuneless.errors import TunelessError
from tuneless.methods.fold import fold_naive
from tuneless.zoo import build_model


def test_identity_ratio_is_one_and_folding_lowers_it(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    x = torch.randn(16, 3, 32, 32)
    same = variance_ratio(model, model, x)
    assert len(same) == 21 + 21 + 1  # convs (with 2 shortcuts), BNs, fc
    assert all(v == pytest.approx(1.0) for v in same.values())
    small = fold_naive(model, sparsity=0.5, example_inputs=x, n_init=1)
    ratios = variance_ratio(model, small, x)
    assert ratios.keys() == same.keys()
    assert ratios["layer3.2.conv2"] < 0.9  # collapse at depth
    path = plot_variance_ratio({"naive": ratios, "none": same}, tmp_path / "v.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_bad_inputs():
    model = build_model("resnet20").eval()
    with pytest.raises(TunelessError):
        variance_ratio(model, model, torch.randn(1, 3, 32, 32))
    with pytest.raises(TunelessError):
        variance_ratio(model, build_model("lenet5"), torch.randn(4, 3, 32, 32))
