"""Folding: exactness (identity, duplicates, C·W projection), determinism, breadth, errors."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tuneless.errors import TunelessError
from tuneless.evaluate import count_params
from tuneless.methods.fold import channel_features, cluster_groups, fold, fold_ar, fold_naive
from tuneless.zoo import build_model

from .fold_models import X32, DuplicatedCNN, _randomise_bn, _same_state


@pytest.mark.parametrize("repair", ["none", "ar"])
def test_channel_ratio_zero_is_identity(repair):
    model = _randomise_bn(build_model("resnet20"))
    small = fold(model, channel_ratio=0.0, repair=repair, example_inputs=X32)
    assert count_params(small) == count_params(model)
    assert torch.allclose(small(X32), model(X32), atol=1e-6)


@pytest.mark.parametrize("repair", ["none", "ar"])
@pytest.mark.parametrize("features", ["raw", "block", "gamma"])
def test_duplicated_channels_fold_to_half_width_exactly(repair, features):
    model = DuplicatedCNN()
    small = fold(model, channel_ratio=0.5, repair=repair, example_inputs=X32, features=features)
    assert small.conv1.out_channels == 4 and small.conv2.out_channels == 4
    assert small.fc.in_features == 4
    # exact up to float32 rounding: outputs reach ~170, where one ulp is 1.5e-5 (AR's factor
    # is 1 only up to rounding of the cosines)
    out = model(X32)
    assert (small(X32) - out).abs().max() <= 1e-6 * out.abs().max()


def _projected(weight: torch.Tensor, labels: list[int]) -> torch.Tensor:
    """C·W: every row replaced by the mean of its cluster."""
    lab = torch.tensor(labels)
    k = int(lab.max()) + 1
    means = torch.zeros(k, weight.shape[1]).index_add_(0, lab, weight)
    return (means / torch.bincount(lab, minlength=k)[:, None])[lab]


class GeluMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(12, 32), nn.Linear(32, 5)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class GatedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(12, 32), nn.Linear(12, 32), nn.Linear(32, 5)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


@pytest.mark.parametrize("cls", [GeluMLP, GatedMLP])
def test_mlp_fold_equals_projection_of_producers(cls):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(16, 12)
    small = fold(model, channel_ratio=0.5, repair="none", example_inputs=x)
    assert small.down.in_features == 16
    (labels,) = small.tuneless_report["labels"].values()
    big = copy.deepcopy(model)
    with torch.no_grad():
        for name in ("gate", "up"):
            if hasattr(big, name):
                lin = getattr(big, name)
                lin.weight.copy_(_projected(lin.weight, labels))
                lin.bias.copy_(_projected(lin.bias[:, None], labels)[:, 0])
    assert torch.allclose(small(x), big(x), atol=1e-5)
    assert not torch.allclose(small(x), model(x), atol=1e-3)  # folding did change something


def test_seed_makes_fold_repeatable_and_input_untouched():
    model = _randomise_bn(build_model("resnet20"))
    before = copy.deepcopy(model)
    a = fold_ar(model, sparsity=0.4, example_inputs=X32, seed=1, n_init=3)
    b = fold_ar(model, sparsity=0.4, example_inputs=X32, seed=1, n_init=3)
    assert _same_state(a, b)
    assert _same_state(model, before)
    assert abs(a.tuneless_report["achieved_sparsity"] - 0.4) <= 0.01
    assert count_params(a) == a.tuneless_report["params_after"]


def test_groups_clustered_side_by_side_give_the_one_thread_partitions():
    """With two torch threads the groups are clustered concurrently, one thread each: the
    same labels as a one-thread run, and the caller's thread count restored."""
    model = _randomise_bn(build_model("vgg11_bn", width=0.5))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fold_ar(model, sparsity=0.5, example_inputs=X32, seed=2)
        torch.set_num_threads(2)
        two = fold_ar(model, sparsity=0.5, example_inputs=X32, seed=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert one.tuneless_report["labels"] == two.tuneless_report["labels"]
    sa, sb = one.state_dict(), two.state_dict()  # the repair's sums may round per thread count
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6) for k in sa)


def test_an_error_in_one_group_stops_the_fold_and_restores_the_threads():
    threads = torch.get_num_threads()

    def run(gid, k):
        if gid == 3:
            raise TunelessError("group 3 failed")
        return gid * k

    try:
        torch.set_num_threads(2)
        assert cluster_groups(run, [(1, 2), (2, 2)]) == {1: 2, 2: 4}
        with pytest.raises(TunelessError, match="group 3 failed"):
            cluster_groups(run, [(1, 2), (3, 2), (2, 2)])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_block_features_balance_scales():
    model = _randomise_bn(build_model("resnet20"))
    from tuneless.graph import find_groups

    g = find_groups(model, X32).reducible[0]
    raw = channel_features(model, g, "raw")
    block = channel_features(model, g, "block")
    assert raw.shape == block.shape
    slots = [s for s in g.slots if s.param not in ("running_var", "num_batches_tracked")]
    widths = [s.channel_rows(model, g.n).shape[1] for s in slots]
    start = 0
    for w in widths:  # every block has unit mean squared row norm
        part = block[:, start:start + w]
        assert part.pow(2).sum(1).mean().item() == pytest.approx(1.0, rel=1e-4)
        start += w


def test_norm_stats_decides_whether_running_means_are_features():
    """Default: BN running means stay out of the distance (docs/folding.md, Defaults)."""
    model = _randomise_bn(build_model("resnet20"))
    from tuneless.graph import find_groups

    g = find_groups(model, X32).reducible[0]
    means = [s for s in g.norms if s.param == "running_mean"]
    with_stats = channel_features(model, g, "raw", norm_stats=True)
    without = channel_features(model, g, "raw", norm_stats=False)
    assert means and with_stats.shape[1] - without.shape[1] == len(means)
    for s in means:  # the dropped columns are exactly the running means
        col = s.channel_rows(model, g.n).float()
        assert any(torch.equal(with_stats[:, j:j + 1], col)
                   for j in range(with_stats.shape[1]))


def test_algorithm_1_order_is_one_option_away():
    """fuse_bn=True, norm_stats=True is the paper's order; the defaults differ from it."""
    model = _randomise_bn(build_model("resnet20")).eval()
    paper = fold_ar(model, sparsity=0.4, example_inputs=X32, fuse_bn=True, norm_stats=True)
    default = fold_ar(model, sparsity=0.4, example_inputs=X32)
    opts = default.tuneless_report["options"]
    assert opts["fuse_bn"] is False and opts["norm_stats"] is False
    assert paper.tuneless_report["options"]["fuse_bn"] is True
    assert paper.tuneless_report["labels"] != default.tuneless_report["labels"]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_folds_torchvision_models(name):
    tv = pytest.importorskip("torchvision.models")
    model = _randomise_bn(getattr(tv, name)(weights=None))
    x = torch.randn(2, 3, 64, 64)
    small = fold_ar(model, sparsity=0.3, example_inputs=x, n_init=1)
    assert abs(small.tuneless_report["achieved_sparsity"] - 0.3) <= 0.01
    assert count_params(small) < 0.72 * count_params(model)
    assert small(x).shape == (2, 1000)
    assert torch.isfinite(small(x)).all()


def test_model_without_batchnorm_folds_naive_and_refuses_bn_repairs():
    model = build_model("lenet5").eval()
    x = torch.randn(4, 1, 28, 28)
    small = fold_naive(model, sparsity=0.3, example_inputs=x)
    assert count_params(small) < count_params(model)
    with pytest.raises(TunelessError, match="BatchNorm"):
        fold_ar(model, sparsity=0.3, example_inputs=x)


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": 1.2}, "sparsity"),
    ({"sparsity": -0.1}, "sparsity"),
    ({"channel_ratio": 1.0}, "channel_ratio"),
    ({"sparsity": 0.3, "channel_ratio": 0.3}, "exactly one"),
    ({}, "exactly one"),
    ({"sparsity": 0.3, "repair": "data"}, "needs data"),
    ({"sparsity": 0.3, "repair": "magic"}, "unknown repair"),
    ({"sparsity": 0.3, "features": "pca"}, "unknown features"),
    ({"sparsity": 0.3, "cluster": "spectral"}, "unknown clustering"),
    ({"sparsity": 0.3, "colour": "red"}, "unknown fold option"),
    ({"sparsity": 0.3, "clusterr": "ward"}, r"clusterr \(did you mean cluster\?\)"),
    ({"channel_ratio": 0.3, "allocation": "error"}, "needs a sparsity"),
    ({"sparsity": 0.3, "allocation": "error", "keep_floor": 1.5}, "keep_floor must be"),
])
def test_bad_arguments_raise_tuneless_error(kwargs, message):
    model = DuplicatedCNN()
    with pytest.raises(TunelessError, match=message):
        fold(model, example_inputs=X32, **kwargs)


def test_explicit_widths_fold_the_named_groups_and_leave_the_rest_whole():
    from tuneless.graph import find_groups

    model = build_model("resnet20").eval()
    graph = find_groups(model, X32)
    narrow = [g for g in graph.reducible if g.n == 16]
    wide = [g for g in graph.reducible if g.n == 64]
    # keys as from the CLI's JSON (strings) or Python (ints)
    small = fold(model, channels={str(narrow[0].id): 8, wide[0].id: 40}, example_inputs=X32)
    kept = small.tuneless_report["kept"]
    assert kept[str(narrow[0].id)] == 8 and kept[str(wide[0].id)] == 40
    assert all(kept[str(g.id)] == g.n for g in graph.reducible if g not in (narrow[0], wide[0]))
    assert small(X32).shape == model(X32).shape
    assert small.tuneless_report["requested_sparsity"] is None
    fixed = next(g.id for g in graph.groups if g.fixed)
    for channels, message in [({fixed: 2}, "is fixed"), ({10_000: 2}, "does not exist"),
                              ({narrow[0].id: 17}, "cannot keep 17"), ({"x": 2}, "integer"),
                              ({2.5: 2}, "integer"), ({narrow[0].id: 0}, "whole number"),
                              ({}, "non-empty")]:
        with pytest.raises(TunelessError, match=message):
            fold(model, channels=channels, example_inputs=X32)
    with pytest.raises(TunelessError, match="not both"):
        fold(model, sparsity=0.3, channels={narrow[0].id: 8}, example_inputs=X32)
    with pytest.raises(TunelessError, match="round_to"):
        fold(model, channels={narrow[0].id: 8}, round_to=8, example_inputs=X32)


def test_fold_r_reestimates_bn_from_data():
    model = _randomise_bn(build_model("resnet20"))
    data = torch.randn(64, 3, 32, 32)
    small = fold(model, sparsity=0.3, repair="data", example_inputs=X32, data=data, n_init=1)
    # after re-estimation each BN's running mean is the mean of its input over the data
    bn = small.bn1
    with torch.no_grad():
        pre = small.conv1(data)
    assert torch.allclose(bn.running_mean, pre.mean((0, 2, 3)), atol=1e-4)
    assert not bn.training


def test_fold_rounds_channel_counts_like_prune():
    model = build_model("resnet20").eval()
    small = fold(model, sparsity=0.4, round_to=8, example_inputs=X32)
    kept = small.tuneless_report["kept"]
    assert all(k % 8 == 0 for k in kept.values())
    assert small.tuneless_report["options"]["round_to"] == 8
    with pytest.raises(TunelessError, match="round_to"):
        fold(model, sparsity=0.4, round_to=0, example_inputs=X32)


def test_default_clustering_is_auto_and_leaves_narrow_networks_as_k_means_folds_them():
    """cluster="auto" only changes groups of ≥ 256 channels: a ResNet-20 (16–64 channels)
    folds exactly as with k-means; a 512-wide MLP group cut lightly goes to Ward + Hartigan."""
    torch.manual_seed(0)
    net = _randomise_bn(build_model("resnet20")).eval()
    auto = fold(net, sparsity=0.3, example_inputs=X32, seed=3)
    assert auto.tuneless_report["options"]["cluster"] == "auto"
    km = fold(net, sparsity=0.3, example_inputs=X32, seed=3, cluster="kmeans")
    assert auto.tuneless_report["labels"] == km.tuneless_report["labels"]
    mlp = nn.Sequential(nn.Linear(20, 512), nn.BatchNorm1d(512), nn.ReLU(),
                        nn.Linear(512, 4)).eval()
    _randomise_bn(mlp)
    x = torch.randn(8, 20)
    a = fold(mlp, channel_ratio=0.2, example_inputs=x, seed=1).tuneless_report["labels"]
    w = fold(mlp, channel_ratio=0.2, example_inputs=x, seed=1,
             cluster="ward-hartigan").tuneless_report["labels"]
    assert a == w
    assert a != fold(mlp, channel_ratio=0.2, example_inputs=x, seed=1,
                     cluster="kmeans").tuneless_report["labels"]
