"""Per-channel features: rows | norm params | consumer columns, selectable parts."""

import torch

from tuneless.graph import CONSUMER, NORM, PRODUCER, find_groups
from tuneless.zoo import build_model


def test_features_concatenate_every_slot_in_order():
    model = build_model("resnet20")
    graph = find_groups(model, torch.randn(1, 3, 32, 32))
    g = next(g for g in graph.reducible if any(s.module == "layer1.0.conv1" for s in g.producers))
    feats = g.features(model)
    # rows of conv1 (16·9), bn1 weight/bias/mean/var (4), columns of conv2 (16·9)
    assert feats.shape == (16, 16 * 9 + 4 + 16 * 9)
    w1, w2 = model.layer1[0].conv1.weight, model.layer1[0].conv2.weight
    assert torch.equal(feats[:, :144], w1.reshape(16, -1))
    assert torch.equal(feats[:, 144], model.layer1[0].bn1.weight.detach())
    assert torch.equal(feats[:, -144:], w2.transpose(0, 1).reshape(16, -1))
    assert g.features(model, parts=(PRODUCER,)).shape == (16, 144)
    assert g.features(model, parts=(NORM,)).shape == (16, 4)
    assert torch.equal(g.features(model, parts=(CONSUMER,)), feats[:, -144:])


def test_flatten_block_columns_belong_to_their_channel():
    model = build_model("lenet5")
    graph = find_groups(model, torch.randn(1, 1, 28, 28))
    g = next(g for g in graph.reducible if any(s.module == "features.3" for s in g.producers))
    cols = g.features(model, parts=(CONSUMER,))
    w = model.classifier[1].weight  # (120, 16·25): channel c owns columns 25c..25c+24
    assert cols.shape == (16, 120 * 25)
    assert torch.equal(cols[3], w[:, 75:100].t().reshape(-1))


def test_slots_iteration_covers_every_group():
    model = build_model("mlp", width=0.05)
    graph = find_groups(model, torch.randn(1, 1, 28, 28))
    pairs = list(graph.slots())
    assert {g.id for g, _ in pairs} == {g.id for g in graph if g.slots}
    assert sum(len(g.slots) for g in graph) == len(pairs)
