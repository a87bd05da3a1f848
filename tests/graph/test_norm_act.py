"""Layers of other libraries the tracer keeps whole: BatchNorm subclasses that add an
activation (timm's BatchNormAct2d: one leaf, reduced as BatchNorm, never fused or treated as
a bare affine map) and convs that pad from the input size (timm's Conv2dSame)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tuneless
from tuneless.export import conv_bn_pairs
from tuneless.graph import find_groups
from tuneless.graph.trace import is_norm_act, is_plain_batchnorm


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's shape: functional batch norm on its own attributes, then dropout, then act."""

    def __init__(self, n: int):
        super().__init__(n)
        self.drop = nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return self.act(self.drop(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1), BatchNormAct2d(16)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, padding=1), BatchNormAct2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.n2(self.c2(self.n1(self.c1(x))))
        return self.fc(x.mean((2, 3)))


def _net():
    torch.manual_seed(0)
    net = Net().eval()
    for n in (net.n1, net.n2):
        n.running_mean.uniform_(-0.5, 0.5)
        n.running_var.uniform_(0.5, 2.0)
    return net


def test_a_norm_with_its_activation_is_a_leaf_and_its_channels_fold():
    net, x = _net(), torch.randn(2, 3, 16, 16)
    assert is_norm_act(net.n1) and not is_plain_batchnorm(net.n1)
    assert is_plain_batchnorm(nn.BatchNorm2d(4)) and not is_norm_act(nn.BatchNorm2d(4))

    class OwnBN(nn.BatchNorm2d):  # a project's subclass that keeps torch's forward: plain
        pass

    class Custom(nn.BatchNorm2d):  # its own forward and no elementwise children: unknown
        def forward(self, x):
            return super().forward(x).flip(1)

    assert is_plain_batchnorm(OwnBN(4)) and not is_norm_act(OwnBN(4))
    assert not is_plain_batchnorm(Custom(4)) and not is_norm_act(Custom(4))
    graph = find_groups(net, x)
    assert sorted(g.n for g in graph.reducible) == [16, 16]  # traced through: none at all
    same = tuneless.prune(net, channel_ratio=0.0, example_inputs=x)  # every group rewritten
    torch.testing.assert_close(same(x), net(x))
    small = tuneless.fold(net, sparsity=0.4, example_inputs=x, allocation="uniform")
    assert small.n1.num_features < 16 and isinstance(small.n1, BatchNormAct2d)
    assert torch.isfinite(small(x)).all()


def test_export_does_not_fuse_away_the_activation():
    net, x = _net(), torch.randn(2, 3, 16, 16)
    assert conv_bn_pairs(net, x) == []
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    assert conv_bn_pairs(plain, x) == [("0", "1")]


@pytest.mark.parametrize("name", ["efficientnet_b0", "regnetx_002", "tf_efficientnet_lite0"])
def test_timm_models_with_norm_act_and_same_padding_convs_reduce(name):
    """BatchNormAct2d everywhere; tf_* models' Conv2dSame pads from the input size in Python
    (untraceable) and is reduced as the conv it is (graph.trace.SAME_PADDING_CONVS)."""
    timm = pytest.importorskip("timm")
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    same = tuneless.prune(model, channel_ratio=0.0, example_inputs=x)
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x), atol=1e-5, rtol=1e-4)
    small = tuneless.prune(model, sparsity=0.3, example_inputs=x)
    assert abs(small.tuneless_report["achieved_sparsity"] - 0.3) <= 0.01
    assert small(x).shape == (1, 10)


def test_a_batchnorm_subclass_that_keeps_torchs_forward_reduces_like_batchnorm():
    class OwnBN(nn.BatchNorm2d):
        pass

    net = nn.Sequential(nn.Conv2d(3, 8, 3), OwnBN(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 12, 12)
    assert [g.n for g in find_groups(net, x).reducible] == [8]  # traced through: fixed
    assert conv_bn_pairs(net, x) == [("0", "1")]  # and still fused on export
