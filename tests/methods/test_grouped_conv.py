"""Grouped convolutions (ResNeXt, RegNet): channels shrink block by block, merges stay
inside a block, and every method keeps the conv's groups."""

import copy

import pytest
import torch
import torch.nn as nn

import tuneless
from tuneless.budget import solve
from tuneless.cluster import cluster, exact_partitions
from tuneless.decisions import merge, top_channels
from tuneless.errors import TunelessError
from tuneless.graph import find_groups
from tuneless.reduce import reduce

X = torch.randn(2, 3, 16, 16)


class Bottleneck(nn.Module):
    """1×1 → grouped 3×3 (4 groups) → 1×1, with BatchNorm: a ResNeXt block."""

    def __init__(self, width=16, groups=4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 6, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.conv3(torch.relu(self.bn2(self.conv2(x))))


def net() -> nn.Module:
    torch.manual_seed(0)
    m = Bottleneck()
    for bn in (m.bn1, m.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    return m.eval()


def test_merging_duplicate_channels_inside_each_block_keeps_the_outputs():
    m = net()
    with torch.no_grad():  # channel 2j+1 of conv1 repeats channel 2j (weights and BN alike)
        for t in (m.conv1.weight, m.bn1.weight, m.bn1.bias, m.bn1.running_mean,
                  m.bn1.running_var):
            t[1::2] = t[0::2]
    graph = find_groups(m, X)
    g = next(g for g in graph.reducible if any(s.module == "conv1" for s in g.producers))
    labels = torch.arange(16) // 2  # pairs, never across the 4-channel blocks
    small = reduce(copy.deepcopy(m), graph, {g.id: merge(labels)})
    assert small.conv2.groups == 4 and small.conv2.in_channels == 8
    assert small.conv2.weight.shape == (16, 2, 3, 3)
    assert torch.allclose(small(X), m(X), atol=1e-5)


def test_a_merge_across_blocks_or_unequal_blocks_is_refused():
    m = net()
    graph = find_groups(m, X)
    g = next(g for g in graph.reducible if any(s.module == "conv1" for s in g.producers))
    across = torch.tensor([0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11])
    with pytest.raises(TunelessError, match="grouped conv in 4 blocks"):
        reduce(m, graph, {g.id: merge(across)})
    with pytest.raises(TunelessError, match="same number in each block"):
        reduce(m, graph, {g.id: torch.tensor([0, 1, 2, 4, 5, 8, 9, 12])[:7]})


@pytest.mark.parametrize("method", ["fold", "prune"])
@pytest.mark.parametrize("allocation", ["uniform", "sensitivity"])
def test_methods_keep_every_block_equal(method, allocation):
    m = net()
    small = getattr(tuneless, method)(m, sparsity=0.4, example_inputs=X,
                                      allocation=allocation).eval()
    c = small.conv2
    assert c.groups == 4 and c.in_channels % 4 == 0 and c.out_channels % 4 == 0
    assert c.in_channels < 16 or c.out_channels < 16
    assert small(X).shape == m(X).shape
    assert abs(small.tuneless_report["achieved_sparsity"] - 0.4) < 0.06


def test_budget_counts_are_whole_blocks():
    m = net()
    graph = find_groups(m, X)
    for s in (0.2, 0.5, 0.7):
        kept = solve(m, graph, s).kept
        assert all(kept[g.id] % g.blocks == 0 and kept[g.id] >= g.blocks
                   for g in graph.reducible)
    blocked = [g for g in graph.reducible if g.blocks > 1]
    assert blocked and all(g.step(8) == 8 and g.step(3) == 12 for g in blocked)


def test_explicit_widths_must_be_whole_blocks():
    m = net()
    gid = next(g.id for g in find_groups(m, X).reducible if g.blocks == 4)
    with pytest.raises(TunelessError, match="multiple of that, not 6"):
        tuneless.fold(m, channels={gid: 6}, example_inputs=X)
    small = tuneless.fold(m, channels={gid: 8}, example_inputs=X)
    assert 8 in (small.conv2.in_channels, small.conv2.out_channels)


def test_blockwise_clustering_is_exact_on_small_blocks():
    from itertools import product

    torch.manual_seed(1)
    x = torch.randn(3, 6, 5)
    labels = exact_partitions(x, 3)
    for b in range(3):  # brute force over every labelling with all 3 clusters used
        def scatter(lab, pts=x[b]):
            return sum(float(((pts[lab == c] - pts[lab == c].mean(0)) ** 2).sum())
                       for c in range(3) if (lab == c).any())
        best = min(scatter(torch.tensor(lab)) for lab in product(range(3), repeat=6)
                   if len(set(lab)) == 3)
        assert scatter(labels[b]) == pytest.approx(best)
    c = cluster(x.reshape(18, 5), 9, blocks=3)
    assert c.k == 9 and all(set(c.labels[b * 6:(b + 1) * 6].tolist()) == set(
        range(b * 3, b * 3 + 3)) for b in range(3))
    wide = cluster(torch.randn(40, 4), 20, blocks=2)  # 20-channel blocks: batched k-means
    assert set(wide.labels[:20].tolist()) == set(range(10))
    with pytest.raises(TunelessError, match="multiple of 3"):
        cluster(x.reshape(18, 5), 8, blocks=3)
    keep = top_channels(torch.arange(12.0), 6, blocks=3)
    assert sorted(keep.tolist()) == [2, 3, 6, 7, 10, 11]


def test_folded_torchvision_resnext_saves_and_loads_by_reference(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    del torchvision
    from tuneless.modelio import build_arch

    m = build_arch("torchvision:resnext50_32x4d", {"num_classes": 10}).eval()
    x = torch.randn(1, 3, 64, 64)
    small = tuneless.fold(m, sparsity=0.3, example_inputs=x, allocation="uniform").eval()
    assert small.layer1[0].conv2.groups == 32 and small.layer1[0].conv2.in_channels < 128
    info = tuneless.save(small, tmp_path / "r.pt")
    assert info["mode"] == "reference"
    assert torch.equal(tuneless.load(tmp_path / "r.pt")(x), small(x))


def test_batched_block_kmeans_matches_one_kmeans_per_block():
    torch.manual_seed(2)
    centres = torch.randn(8, 6, 12) * 3  # 8 blocks of 24 points around 6 centres each
    x = (centres.repeat_interleave(4, 1) + 0.3 * torch.randn(8, 24, 12)).reshape(192, 12)
    together = cluster(x, 48, blocks=8, seed=0)
    apart = sum(cluster(x[b * 24:(b + 1) * 24], 6, seed=0).inertia for b in range(8))
    assert together.inertia <= apart * 1.001
    assert torch.equal(cluster(x, 48, blocks=8, seed=0).labels, together.labels)
    for b in range(8):  # every block's 6 clusters, and no merge across blocks
        assert set(together.labels[b * 24:(b + 1) * 24].tolist()) == set(range(b * 6, b * 6 + 6))
    torch.manual_seed(3)
    noise = torch.randn(96, 30)  # no structure: still within a percent of one call per block
    loose = cluster(noise, 40, blocks=4, seed=1)
    per_block = sum(cluster(noise[b * 24:(b + 1) * 24], 10, seed=1).inertia for b in range(4))
    assert loose.k == 40 and loose.inertia <= per_block * 1.01


def test_pruning_scores_read_each_channel_in_its_own_block():
    from tuneless.methods.prune import channel_importance

    m = net()
    for g in find_groups(m, X).reducible:
        rows = torch.cat([s.channel_rows(m, g.n) for s in g.slots
                          if s.param not in ("running_mean", "running_var",
                                             "num_batches_tracked")], 1).double()
        assert torch.allclose(channel_importance(m, g, "l1"), rows.abs().sum(1))
        assert torch.allclose(channel_importance(m, g, "l2"), rows.pow(2).sum(1).sqrt())
