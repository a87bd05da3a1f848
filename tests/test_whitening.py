"""Input whitening for SVD (tuneless.whitening): the BN-derived second moments match the
sampled ones, the data-driven moments match a hand computation, and a whitened
truncation loses less output energy than a plain one on correlated inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tuneless import TunelessError
from tuneless.methods.svd import svd
from tuneless.whitening import (
    bn_input_scales,
    cholesky_factor,
    input_second_moments,
    relu_second_moment,
)

torch.set_num_threads(1)


def test_relu_second_moment_matches_sampling():
    gen = torch.Generator().manual_seed(0)
    mean = torch.tensor([-1.0, 0.0, 0.7, 2.0])
    std = torch.tensor([0.5, 1.0, 2.0, 0.3])
    y = mean + std * torch.randn(400_000, 4, generator=gen)
    sampled = F.relu(y).pow(2).mean(0).double()
    exact = relu_second_moment(mean.double(), std.double())
    assert torch.allclose(exact, sampled, rtol=0.02)


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12),
                        nn.Flatten(), nn.Linear(12 * 4 * 4, 10))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    return net.eval()


def test_bn_input_scales_follow_the_feeding_norm():
    net = _net()
    scales = bn_input_scales(net)
    assert set(scales) == {"4", "7"}  # the first conv reads the image: no norm feeds it
    bn1, bn2 = net[1], net[5]
    want4 = relu_second_moment(bn1.bias.double(), bn1.weight.double()).sqrt()
    assert torch.allclose(scales["4"], want4.repeat_interleave(9))  # through ReLU + pool
    want7 = (bn2.bias.double() ** 2 + bn2.weight.double() ** 2).sqrt()  # no ReLU
    assert torch.allclose(scales["7"], want7.repeat_interleave(16))  # flatten: 4×4 per ch


def test_input_second_moments_of_a_linear_and_a_conv():
    net = _net()
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    got = input_second_moments(net, {"0": net[0], "7": net[7]}, x, images=6, positions=1000)
    patches = F.unfold(x, 3, padding=1).permute(0, 2, 1).reshape(-1, 27).double()
    assert torch.allclose(got["0"], patches.T @ patches / len(patches))  # all 64 positions
    h = net[:7](x).double()
    assert torch.allclose(got["7"], h.T @ h / 6, atol=1e-6)
    with pytest.raises(TunelessError, match="needs data="):
        svd(net, sparsity=0.3, whiten="data")
    with pytest.raises(TunelessError, match="whiten must be one of none, bn, dir, data"):
        svd(net, sparsity=0.3, whiten="yes")


def test_whitened_truncation_loses_less_output_energy():
    torch.manual_seed(2)
    lin = nn.Linear(32, 32, bias=False)
    mix = torch.randn(32, 32) * torch.logspace(0, -3, 32)  # strongly correlated inputs
    x = torch.randn(4096, 32) @ mix.T
    model = nn.Sequential(lin)
    outs = {}
    for whiten in ("none", "data"):
        small = svd(model, rank_ratio=0.25, whiten=whiten, data=x)
        outs[whiten] = (small(x) - model(x)).pow(2).sum().item()
    assert outs["data"] < 0.5 * outs["none"]


@pytest.mark.parametrize("diagonal", [True, False])
def test_whitened_pair_at_full_rank_is_the_layer(diagonal):
    """W = (W L) L⁻¹: undoing the factor in the first layer of the pair is exact."""
    from tuneless.methods.svd import _spectrum, build_pair

    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    if diagonal:
        factor = torch.rand(36, dtype=torch.float64) + 0.1
    else:
        a = torch.randn(36, 36, dtype=torch.float64)
        factor = torch.linalg.cholesky(a @ a.T + torch.eye(36, dtype=torch.float64))
    pair = build_pair(_spectrum("c", conv, None, factor), 6)
    x = torch.randn(2, 4, 7, 7)
    assert torch.allclose(pair(x), conv(x), atol=1e-5)


def test_cholesky_factor_reproduces_the_moment():
    a = torch.randn(5, 5, dtype=torch.float64)
    m = a @ a.T + torch.eye(5, dtype=torch.float64)
    f = cholesky_factor(m, ridge=0.0)
    assert torch.allclose(f @ f.T, m)


def test_data_free_whitening_from_the_models_own_images():
    """whiten='dir': DeepInversion images of the model replace real data (seeded)."""
    net = _net()
    x = torch.randn(2, 3, 8, 8)
    kw = dict(sparsity=0.3, whiten="dir", example_inputs=x,
              inversion={"num_images": 8, "batch_size": 4, "steps": 2})
    a, b = svd(net, **kw), svd(net, **kw)
    assert a.tuneless_report["whitened_layers"] == 3
    assert a.tuneless_report["options"]["whiten_images"] == 8
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                  b.state_dict().values()))
