"""tuneless.padding: zero channels up to a multiple leave outputs unchanged."""

import pytest
import torch
import torch.nn as nn

import tuneless
from tuneless.errors import TunelessError
from tuneless.graph import find_groups
from tuneless.modelio import build_arch
from tuneless.padding import pad_channels, padding_plan


def trained_looking(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.1, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
    return model.eval()


@pytest.mark.parametrize("arch", ["resnet20", "resnet20a"])  # projection / zero-padding
def test_folded_resnet_padded_to_multiples_of_8_keeps_outputs(arch):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    small = tuneless.fold(trained_looking(build_arch(arch)), sparsity=0.5,
                          example_inputs=x, allocation="uniform").eval()
    padded, plan = pad_channels(small, x, 8)
    assert plan and all(m % 8 == 0 and n < m < n + 8 for n, m in plan.values())
    widths = {g.n for g in find_groups(padded, x).reducible}
    assert all(n % 8 == 0 for n in widths)
    y = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(small(y), padded(y), atol=1e-5)
    assert pad_channels(padded, x, 8)[1] == {}  # nothing left to pad


def test_depthwise_and_linear_groups_pad():
    net = nn.Sequential(nn.Conv2d(3, 11, 3, padding=1), nn.BatchNorm2d(11), nn.ReLU(),
                        nn.Conv2d(11, 11, 3, padding=1, groups=11), nn.BatchNorm2d(11),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(11, 5),
                        nn.ReLU(), nn.Linear(5, 3))
    net = trained_looking(net)
    x = torch.randn(2, 3, 8, 8)
    padded, plan = pad_channels(net, x, 4)
    assert sorted(plan.values()) == [(5, 8), (11, 12)]
    assert padded[3].groups == 12 and padded[8].out_features == 8
    with torch.no_grad():
        assert torch.allclose(net(x), padded(x), atol=1e-6)


def test_grouped_conv_groups_are_left_alone():
    x = torch.randn(1, 3, 32, 32)
    graph = find_groups(build_arch("resnext20").eval(), x)
    assert all(graph[gid].blocks == 1 for gid in padding_plan(graph, 3))


@pytest.mark.parametrize("bad", [0, -8, 2.5, "8"])
def test_bad_multiple(bad):
    with pytest.raises(TunelessError, match="pad_to must be a positive integer"):
        pad_channels(nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)),
                     torch.randn(1, 3), bad)
