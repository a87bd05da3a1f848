"""Error-based allocation: meets the budget, and spends it on groups that fold cheaply."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from tuneless.allocation import count_levels, error_allocation
from tuneless.budget import param_count
from tuneless.graph import find_groups


class TwoGroups(nn.Module):
    """Group a: 32 channels that are 4 distinct ones repeated; group b: 32 distinct channels."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b, self.out = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        with torch.no_grad():
            self.a.weight.copy_(torch.randn(4, 16, generator=g).repeat(8, 1))
            self.a.bias.zero_()
            self.b.weight.copy_(torch.randn(32, 4, generator=g).repeat(1, 8))

    def forward(self, x):
        return self.out(F.relu(self.b(F.relu(self.a(x)))))


def test_levels():
    assert count_levels(8, 0.5, 1) == [8, 7, 6, 5, 4]
    lv = count_levels(200, 0.9, 1)
    assert lv[0] == 200 and lv[-1] == 20 and lv == sorted(lv, reverse=True)


def test_cheap_group_is_folded_first_and_budget_met():
    model = TwoGroups().eval()
    graph = find_groups(model, torch.randn(2, 16))
    from tuneless.methods.fold import channel_features

    feats = {g.id: channel_features(model, g, "raw") for g in graph.reducible}
    kept = error_allocation(model, graph, feats, 0.3)
    before = param_count(model, graph)
    assert 1 - param_count(model, graph, kept) / before >= 0.3 - 1e-9
    ids = sorted(kept, key=lambda gid: graph[gid].producers[0].module)
    ka, kb = kept[ids[0]], kept[ids[1]]
    assert ka < kb  # the redundant group gives up its channels first
