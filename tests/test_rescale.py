import copy

import torch
import torch.nn as nn

from tuneless.graph import find_groups
from tuneless.methods.fold import fold
from tuneless.rescale import balance_scales, homogeneous_groups

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class Net(nn.Module):
    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.act = act or nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.act(self.bn1(self.conv1(x))), 2)
        return self.head(torch.relu(self.bn2(self.conv2(x))).flatten(1))


@torch.no_grad()
def scaled_twins() -> Net:
    """conv1's channels 4-7 compute channels 0-3 at twice the scale (γ, β × 2) and their
    consumer columns are halved: each pair is one function split over two channels."""
    torch.manual_seed(0)
    net = Net()
    for bn in (net.bn1, net.bn2):
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.1)
    net.conv1.weight[4:] = net.conv1.weight[:4]
    net.conv1.bias[4:] = net.conv1.bias[:4]
    net.bn1.running_mean[4:] = net.bn1.running_mean[:4]
    net.bn1.running_var[4:] = net.bn1.running_var[:4]
    net.bn1.weight[4:] = 2 * net.bn1.weight[:4]
    net.bn1.bias[4:] = 2 * net.bn1.bias[:4]
    net.conv2.weight[:, 4:] = net.conv2.weight[:, :4] / 2
    return net.eval()


def _gid(graph, producer: str) -> int:
    return next(g.id for g in graph.groups if any(s.module == producer for s in g.producers))


def test_balance_keeps_the_function_and_equalises_norms():
    net = scaled_twins()
    graph = find_groups(net, X)
    ref = net(X)
    done = balance_scales(net, graph, X)
    assert sorted(done) == sorted([_gid(graph, "conv1"), _gid(graph, "conv2")])
    assert torch.allclose(net(X), ref, atol=1e-5)
    gb = torch.stack([net.bn1.weight, net.bn1.bias], 1).norm(dim=1)
    col = net.conv2.weight.transpose(0, 1).reshape(8, -1).norm(dim=1)
    assert torch.allclose(gb, col, rtol=1e-5)


def test_scaled_twins_merge_exactly_only_when_balanced():
    net = scaled_twins()
    gid = _gid(find_groups(net, X), "conv1")
    ref = net(X)
    kw = {"repair": "none", "channels": {gid: 4}, "example_inputs": X}
    balanced = fold(net, balance=True, **kw)
    plain = fold(net, **kw)
    assert balanced.conv1.out_channels == plain.conv1.out_channels == 4
    assert torch.allclose(balanced(X), ref, atol=1e-4)
    assert not torch.allclose(plain(X), ref, atol=1e-2)
    assert torch.equal(net(X), ref)  # the input model is untouched


def test_non_homogeneous_activations_are_left_alone():
    for act in (nn.ReLU6(), nn.SiLU(), nn.GELU(), nn.Sigmoid()):
        net = scaled_twins()
        net.act = act
        graph = find_groups(net, X)
        before = copy.deepcopy(net.state_dict())
        assert _gid(graph, "conv1") not in homogeneous_groups(net, graph, X)
        done = balance_scales(net, graph, X)
        assert _gid(graph, "conv1") not in done
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()
                   if k.startswith("bn1") or k.startswith("conv2"))


def test_leaky_relu_is_homogeneous():
    net = scaled_twins()
    net.act = nn.LeakyReLU(0.1)
    graph = find_groups(net, X)
    assert _gid(graph, "conv1") in homogeneous_groups(net, graph, X)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.bn(self.conv(x)))
        return self.head(x.mean((2, 3)))


def test_a_residual_stream_is_not_rescaled():
    net = Residual().eval()
    graph = find_groups(net, X)
    stream = _gid(graph, "stem")
    assert stream not in homogeneous_groups(net, graph, X)
    ref = net(X)
    balance_scales(net, graph, X)
    assert torch.allclose(net(X), ref, atol=1e-5)


@torch.no_grad()
def test_torchvision_resnet18_balances_its_block_interiors_only():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18(num_classes=10).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    graph = find_groups(net, x)
    ref = net(x)
    done = balance_scales(net, graph, x)
    interiors = {g.id for g in graph.groups if any(s.module.endswith(".conv1") and
                                                   s.module.startswith("layer")
                                                   for s in g.producers)}
    assert set(done) == interiors  # streams (several writers) and the stem stay as they are
    assert torch.allclose(net(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
