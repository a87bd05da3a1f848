"""Repairs: AR factor values, BN fusion exactness, BN re-estimation, DeepInversion statistics."""

import copy

import pytest
import torch
import torch.nn as nn

from tuneless.decisions import Merge
from tuneless.deepinversion import synthesize
from tuneless.errors import TunelessError
from tuneless.graph import find_groups
from tuneless.methods.fold import fold
from tuneless.reduce import reduce
from tuneless.repair import (
    REPAIRS,
    _apply_ar,
    ar_factors,
    fuse_bn_normalisation,
    image_batches,
    reestimate_bn,
)
from tuneless.zoo import build_model


def test_repairs_declare_data_and_bn_needs():
    assert REPAIRS["data"].needs_data and not REPAIRS["ar"].needs_data
    assert not REPAIRS["dir"].needs_data and REPAIRS["dir"].needs_bn
    assert not REPAIRS["none"].needs_bn


def test_ar_factor_values():
    e = torch.eye(4)
    # identical rows: E = 1, factor 1; orthogonal rows: E = 0, factor sqrt(N)
    rows = torch.cat([e[0:1].repeat(3, 1), e])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    f = ar_factors(rows, labels)
    assert f[0].item() == pytest.approx(1.0)
    assert f[1].item() == pytest.approx(2.0)
    # two rows at 60 degrees: E = 0.5, factor sqrt(2 / 1.5)
    rows = torch.tensor([[1.0, 0.0], [0.5, 3**0.5 / 2], [0.0, 1.0]])
    f = ar_factors(rows, torch.tensor([0, 0, 1]))
    assert f.tolist() == pytest.approx([(2 / 1.5) ** 0.5, 1.0])


def test_ar_factor_guards_anticorrelated_and_zero_rows():
    rows = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    f = ar_factors(rows, torch.tensor([0, 0, 1, 1]))
    assert torch.isfinite(f).all()
    assert f[0].item() == pytest.approx(2**0.5)  # E clamped to 0, never 1 + (N−1)E ≤ 0
    assert f[1].item() == pytest.approx(2**0.5)


def test_fold_ar_rescales_a_norm_after_a_relu_as_one_right_after_the_layer():
    """Keras order (conv → ReLU → BN): the merged channel's spread shrinks by the same AR
    factor after the ReLU, so its γ gets it too; identical channels keep γ (factor 1)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 1))
    w = net[0].weight.data
    w[1] = w[0]  # channels 0 and 1 identical: merging them is exact
    w[3] = w[2] + 0.9 * torch.randn_like(w[2])  # 2 and 3 alike but not equal
    net[2].weight.data = torch.arange(1.0, 7.0)
    net.eval()
    x = torch.randn(2, 3, 8, 8)
    graph = find_groups(net, x)
    (group,) = graph.reducible
    naive = fold(net, channels={group.id: 4}, example_inputs=x, repair="none")
    ar = fold(net, channels={group.id: 4}, example_inputs=x, repair="ar")
    ratio = ar[2].weight / naive[2].weight
    assert ratio.min().item() == pytest.approx(1.0)  # the identical pair (and singletons)
    assert ratio.max().item() > 1.01  # the pair that is alike, not equal, is rescaled
    labels = torch.tensor([0, 0, 1, 1, 2, 3])  # the two pairs merged by hand
    gammas = {}
    for through in (True, False):  # False: what the data repairs' width probes apply
        merged = reduce(net, graph, {group.id: Merge(labels, 4)})
        before = merged[2].weight.detach().clone()
        _apply_ar(net, merged, graph, {group.id: labels}, through_relu=through)
        gammas[through] = merged[2].weight.detach() / before
    assert gammas[False].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert gammas[True][0].item() == pytest.approx(1.0) and gammas[True][1].item() > 1.01


def _bn_model():
    m = build_model("resnet20")
    g = torch.Generator().manual_seed(0)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean = torch.randn(bn.num_features, generator=g) * 0.1
            bn.running_var = torch.rand(bn.num_features, generator=g) + 0.5
    return m.eval()


def test_bn_fusion_keeps_the_function():
    m = _bn_model()
    x = torch.randn(4, 3, 32, 32)
    fused = copy.deepcopy(m)
    names = fuse_bn_normalisation(fused, find_groups(m, x))
    assert len(names) == 21  # every BN of ResNet-20 (incl. 2 shortcuts) has a producer
    assert torch.allclose(fused(x), m(x), atol=1e-5)
    assert torch.allclose(fused.bn1.running_var, torch.full((16,), 1 - fused.bn1.eps))


def test_reestimate_bn_matches_data_statistics_and_keeps_input():
    m = _bn_model()
    before = copy.deepcopy(m.state_dict())
    data = torch.randn(96, 3, 32, 32) * 2 + 1
    new = reestimate_bn(m, data, batch_size=32)
    with torch.no_grad():
        pre = new.conv1(data)
    assert torch.allclose(new.bn1.running_mean, pre.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(new.bn1.running_var, pre.var((0, 2, 3)), rtol=2e-2)
    assert new.bn1.momentum == 0.1 and not new.training
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_image_batches_accepts_loaders_and_limits():
    data = [(torch.zeros(5, 3), torch.zeros(5)) for _ in range(4)]
    sizes = [len(b) for b in image_batches(data, limit=12)]
    assert sizes == [5, 5, 2]
    with pytest.raises(TunelessError):
        list(image_batches(42))


def test_bn_repairs_refuse_models_without_bn():
    with pytest.raises(TunelessError, match="BatchNorm"):
        reestimate_bn(build_model("lenet5"), torch.randn(8, 1, 28, 28))
    with pytest.raises(TunelessError, match="BatchNorm"):
        synthesize(build_model("lenet5"), torch.randn(2, 1, 28, 28), steps=1)


def test_deepinversion_moves_bn_statistics_towards_the_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    m[1].running_mean = torch.linspace(-1, 1, 8)
    m[1].running_var = torch.linspace(0.5, 2, 8)
    m.eval()
    state = copy.deepcopy(m.state_dict())
    x = torch.randn(2, 3, 16, 16)

    def gap(images):
        with torch.no_grad():
            pre = m[0](images)
        return float((pre.mean((0, 2, 3)) - m[1].running_mean).norm()
                     + (pre.var((0, 2, 3)) - m[1].running_var).norm())

    start = gap(torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    images = synthesize(m, x, num_images=32, batch_size=32, steps=60, lr=0.1)
    assert images.shape == (32, 3, 16, 16)
    assert gap(images) < 0.5 * start
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())


def _trained_resnet20():
    """resnet20 with non-trivial BN statistics (random weights, stats from random images)."""
    torch.manual_seed(0)
    m = build_model("resnet20")
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 3, 32, 32))
    return m.eval()


def test_fold_dir_matches_statistics_on_its_own_deepinversion_images():
    """repair="dir" = DeepInversion images (DIR_MATCH_INVERSION under the user's overrides),
    then statistics matching on them; dir_stats="reestimate" = the paper's re-estimation."""
    from tuneless import fold
    from tuneless.repair import DIR_MATCH_INVERSION

    m = _trained_resnet20()
    x = torch.randn(4, 3, 32, 32)
    inv = {"num_images": 8, "batch_size": 8, "steps": 2}
    kw = dict(sparsity=0.3, example_inputs=x, seed=1, allocation="uniform")  # the same widths
    got = fold(m, repair="dir", inversion=inv, **kw)
    images = synthesize(m, x, seed=1, **{**DIR_MATCH_INVERSION, **inv})
    want = fold(m, repair="match", data=images, **kw)
    paper = fold(m, repair="dir", inversion=inv, dir_stats="reestimate", **kw)
    paper_want = fold(m, repair="data", data=synthesize(m, x, seed=1, **inv), **kw)
    probe = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(got(probe), want(probe), atol=1e-5)
        assert torch.allclose(paper(probe), paper_want(probe), atol=1e-5)
        assert not torch.allclose(got(probe), paper(probe), atol=1e-3)
    assert got.tuneless_report["options"]["dir_stats"] == "match"


def test_fold_dir_stats_is_validated():
    from tuneless import fold

    with pytest.raises(TunelessError, match="unknown dir_stats 'exact'"):
        fold(build_model("resnet20"), sparsity=0.3, repair="dir", dir_stats="exact",
             example_inputs=torch.randn(2, 3, 32, 32))


def test_the_default_repair_of_a_network_without_batchnorm_is_none_and_ar_is_refused():
    import tuneless

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    x = torch.randn(1, 3, 12, 12)
    with pytest.warns(UserWarning, match="no BatchNorm"):
        small = tuneless.fold(net, sparsity=0.3, example_inputs=x, allocation="uniform")
    assert small.tuneless_report["method"] == "fold-none"
    with pytest.raises(TunelessError, match="repair 'ar' works through BatchNorm"):
        tuneless.fold(net, sparsity=0.3, example_inputs=x, repair="ar")


@pytest.mark.parametrize("shape", [(8, 4, 6, 5), (8, 4), (3, 2, 7)])
def test_inversion_channel_stats_match_tensor_var_and_its_gradient(shape):
    from tuneless.deepinversion import channel_stats

    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    dims = [0, *range(2, x.dim())]
    mean, var = channel_stats(x)
    ref_mean, ref_var = x.mean(dims), x.var(dims, unbiased=False)
    assert torch.allclose(mean, ref_mean) and torch.allclose(var, ref_var)
    w = torch.randn(shape[1], dtype=torch.float64)
    (got,) = torch.autograd.grad((mean * w).sum() + (var * w).pow(2).sum(), [x])
    (want,) = torch.autograd.grad((ref_mean * w).sum() + (ref_var * w).pow(2).sum(), [x])
    assert torch.allclose(got, want)
