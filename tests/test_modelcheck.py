"""tuneless.modelcheck: what every method refuses before any work, in one line."""

import pytest
import torch
import torch.nn as nn

import tuneless
from tuneless.errors import TunelessError


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))


@pytest.mark.parametrize("method", ["fold", "prune", "svd"])
def test_weights_on_the_meta_device_are_named(method):
    with torch.device("meta"):
        model = net()
    with pytest.raises(TunelessError, match=r"0.weight is on the meta device .* needs the "
                                            "weights themselves"):
        getattr(tuneless, method)(model, sparsity=0.3,
                                  example_inputs=torch.randn(1, 3, 8, 8, device="meta"))


def test_nan_and_inf_are_named_with_the_tensor():
    model = net().eval()
    with torch.no_grad():
        model[1].running_var[2] = float("inf")
    with pytest.raises(TunelessError, match="Inf values in 1.running_var"):
        tuneless.fold(model, sparsity=0.3, example_inputs=torch.randn(1, 3, 8, 8))
