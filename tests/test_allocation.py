"""Error-based allocation: meets the budget, and spends it on groups that fold cheaply."""

import math

import pytest
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


def test_floor_bounds_every_group_and_budget_still_met():
    model = TwoGroups().eval()
    graph = find_groups(model, torch.randn(2, 16))
    from tuneless.methods.fold import channel_features

    feats = {g.id: channel_features(model, g, "raw") for g in graph.reducible}
    free = error_allocation(model, graph, feats, 0.3)
    floor = {gid: 24 for gid in free}
    kept = error_allocation(model, graph, feats, 0.3, floor=floor)
    assert min(free.values()) < 24  # the floor binds
    assert all(k >= 24 for k in kept.values())
    before = param_count(model, graph)
    assert 1 - param_count(model, graph, kept) / before >= 0.3 - 1e-9


def test_fold_error_allocation_keeps_a_share_of_the_uniform_count():
    from tuneless.budget import solve
    from tuneless.methods.fold import fold

    model = TwoGroups().eval()
    x = torch.randn(2, 16)
    graph = find_groups(model, x)
    bound = min(math.ceil(0.8 * k) for k in solve(model, graph, 0.5, 1).kept.values())

    def widths(**kw):
        small = fold(model, sparsity=0.5, allocation="error", repair="none", example_inputs=x, **kw)
        return min(small.a.out_features, small.b.out_features)

    assert widths(keep_floor=0.0) < bound  # unbounded, the redundant group is cut deeper
    assert widths(keep_floor=0.8) >= bound


def test_sensitivity_allocation_follows_the_measured_damage_and_meets_the_budget():
    from tuneless.allocation import sensitivity_allocation

    model = TwoGroups().eval()
    graph = find_groups(model, torch.randn(2, 16))
    ids = sorted((g.id for g in graph.reducible), key=lambda gid: graph[gid].producers[0].module)
    cheap, dear = ids
    calls = []

    def damage(gid, k):  # group `dear` hurts ten times as much per channel removed
        calls.append((gid, k))
        return (10.0 if gid == dear else 1.0) * (32 - k)

    kept = sensitivity_allocation(model, graph, damage, 0.3)
    before = param_count(model, graph)
    assert 1 - param_count(model, graph, kept) / before >= 0.3 - 1e-9
    assert kept[cheap] < kept[dear] == 32  # the budget is spent where it costs least
    assert {gid for gid, _ in calls} == set(ids) and all(k < 32 for _, k in calls)


def test_measuring_order_changes_which_group_is_measured_first_not_the_widths():
    from tuneless.allocation import sensitivity_allocation

    model = TwoGroups().eval()
    graph = find_groups(model, torch.randn(2, 16))
    ids = [g.id for g in graph.reducible]

    def run(order):
        calls = []

        def damage(gid, k):  # equal curves: the greedy's tie-break decides the widths
            calls.append(gid)
            return float(32 - k)

        return sensitivity_allocation(model, graph, damage, 0.3, order=order), calls

    plain, calls = run(None)
    backwards, calls_back = run(lambda gid: -ids.index(gid))
    assert calls[0] == ids[0] and calls_back[0] == ids[-1]
    assert backwards == plain


def test_fold_sensitivity_spares_the_group_whose_folding_moves_the_output():
    from tuneless.methods.fold import fold

    model = TwoGroups().eval()
    x = torch.randn(2, 16)
    small = fold(model, sparsity=0.3, allocation="sensitivity", repair="none", example_inputs=x,
                 keep_floor=0.0)
    # group a is 4 distinct channels repeated: folding it to ≥ 4 clusters moves nothing
    assert 4 <= small.a.out_features < small.b.out_features == 32
    assert small.tuneless_report["achieved_sparsity"] >= 0.3 - 1e-9
    assert torch.allclose(small(x), model(x), atol=1e-5)  # only duplicates were merged


def test_fold_sensitivity_probes_with_the_repair_images(monkeypatch):
    import tuneless.methods.fold as fold_module

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
            return self.fc(x.mean((2, 3)))

    import tuneless.allocation as allocation

    real_probe = allocation.probe_inputs

    def probe_inputs(x, n, seed, data=None):
        assert data is not None, "a data repair must probe with its own images"
        return real_probe(x, n, seed, data)

    monkeypatch.setattr(allocation, "probe_inputs", probe_inputs)
    model = Net().eval()
    data = torch.randn(16, 3, 8, 8)
    small = fold_module.fold(model, sparsity=0.3, allocation="sensitivity", repair="data",
                             data=data, example_inputs=data[:2], probe_images=8)
    assert small.tuneless_report["options"]["allocation"] == "sensitivity"


def test_sensitivity_options_are_checked():
    import pytest

    from tuneless.errors import TunelessError
    from tuneless.methods.fold import fold

    model, x = TwoGroups().eval(), torch.randn(2, 16)
    for bad in ({"round_to": 8}, {"probe_images": 1}):
        with pytest.raises(TunelessError):
            fold(model, sparsity=0.3, allocation="sensitivity", repair="none", example_inputs=x,
                 **bad)
    with pytest.raises(TunelessError, match="needs a sparsity"):
        fold(model, channel_ratio=0.3, allocation="error", repair="none", example_inputs=x)
    # a channel ratio is the budget its uniform fold removes, reallocated
    uniform = fold(model, channel_ratio=0.3, repair="none", example_inputs=x)
    sens = fold(model, channel_ratio=0.3, allocation="sensitivity", repair="none",
                example_inputs=x, keep_floor=0.0)
    assert (sens.tuneless_report["achieved_sparsity"]
            >= uniform.tuneless_report["achieved_sparsity"] - 1e-9)


def test_pink_noise_probes_are_normalised_images_and_other_inputs_stay_gaussian():
    from tuneless.allocation import probe_inputs

    img = probe_inputs(torch.zeros(2, 3, 16, 16), 8, seed=0)
    assert img.shape == (8, 3, 16, 16)
    assert torch.allclose(img.mean((2, 3)), torch.zeros(8, 3), atol=1e-5)
    assert torch.allclose(img.std((2, 3)), torch.ones(8, 3), atol=1e-4)
    # pink: neighbouring pixels are strongly correlated, unlike white noise
    corr = (img[..., 1:] * img[..., :-1]).mean()
    assert corr > 0.5
    flat = probe_inputs(torch.zeros(2, 16), 8, seed=0)
    assert flat.shape == (8, 16) and abs(float((flat[:, 1:] * flat[:, :-1]).mean())) < 0.3
    data = torch.randn(20, 3, 8, 8)
    assert torch.equal(probe_inputs(data[:2], 8, 0, data=data), data[:8])


def test_prune_sensitivity_allocation_spares_the_group_that_matters():
    from tuneless.methods.prune import prune

    model = TwoGroups().eval()
    with torch.no_grad():  # half of group a's channels feed nothing: pruning them is free
        model.b.weight[:, 16:] = 0
        model.b.weight[:, :16] = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 16)
    model.train()  # the probing leaves the caller's mode alone
    small = prune(model, sparsity=0.3, allocation="sensitivity", example_inputs=x,
                  keep_floor=0.0)
    assert model.training
    model.eval()
    assert 16 <= small.a.out_features < small.b.out_features == 32
    assert torch.allclose(small(x), model(x), atol=1e-5)
    assert small.tuneless_report["achieved_sparsity"] >= 0.3 - 1e-9
    assert small.tuneless_report["options"]["allocation"] == "sensitivity"


def test_large_image_probes_shrink_only_where_the_model_runs_on_them():
    from tuneless.allocation import small_probes

    pooled = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(4, 2))
    fixed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 254 * 254, 2))
    probe = torch.randn(2, 3, 256, 256)
    assert small_probes(pooled, probe).shape == (2, 3, 128, 128)
    assert small_probes(fixed, probe) is probe  # its flatten needs the full size
    tiny = torch.randn(2, 3, 32, 32)
    assert small_probes(pooled, tiny) is tiny


def test_auto_allocation_measures_widths_where_it_was_measured_to_win():
    """allocation="auto" (the default) = "sensitivity" for repairs none / ar / data / refit
    on a network with convolutions (under a FLOP budget for data only); "uniform" on a
    fully connected one, for other repairs and with round_to; the report names what ran."""
    from tuneless.allocation import KEEP_FLOOR
    from tuneless.methods.fold import fold
    from tuneless.zoo import build_model

    conv = build_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)

    def ran(model, inputs, **kw):
        return fold(model, sparsity=0.3, example_inputs=inputs, **kw).tuneless_report

    assert ran(conv, x)["allocation"] == "sensitivity"
    assert ran(conv, x, repair="none")["allocation"] == "sensitivity"
    assert ran(conv, x, repair="data", data=torch.randn(8, 3, 32, 32),
               probe_images=4)["allocation"] == "sensitivity"
    assert ran(conv, x, round_to=4)["allocation"] == "uniform"
    assert ran(conv, x, repair="refit", data=torch.randn(8, 3, 32, 32), refit_images=8,
               probe_images=4)["allocation"] == "sensitivity"
    assert ran(conv, x, repair="match", data=torch.randn(8, 3, 32, 32))["allocation"] \
        == "uniform"
    assert ran(conv, x, budget="flops")["allocation"] == "uniform"  # Fold-AR lost there
    assert ran(conv, x, budget="flops", repair="data", data=torch.randn(8, 3, 32, 32),
               probe_images=4)["allocation"] == "sensitivity"
    assert ran(TwoGroups().eval(), torch.randn(2, 16), repair="none")["allocation"] == "uniform"
    # too costly to measure: uniform, and the user is told how to measure anyway
    import pytest

    with pytest.warns(UserWarning, match="allocation='sensitivity' to measure anyway"):
        assert ran(conv, x, auto_budget=1e6)["allocation"] == "uniform"
    # the default floor is the measured one: no group below 3/4 of its uniform width
    from tuneless.budget import solve

    graph = find_groups(conv, x)
    uniform = solve(conv, graph, 0.3).kept
    kept = ran(conv, x)["kept"]
    assert KEEP_FLOOR["sensitivity"] == 0.75
    assert all(kept[str(g)] >= math.ceil(0.75 * k) for g, k in uniform.items())
    assert any(kept[str(g)] != k for g, k in uniform.items())


def test_measured_widths_take_no_channel_the_budget_does_not_need():
    """The greedy's last step can overshoot by a wide stream channel; the refund gives back
    every channel the budget does not need (ResNet-20 at 10%: 10.9% removed before)."""
    from tuneless.allocation import sensitivity_allocation
    from tuneless.budget import ParamCounter
    from tuneless.zoo import build_model

    model, x = build_model("resnet20").eval(), torch.randn(2, 3, 32, 32)
    graph = find_groups(model, x)
    n = {g.id: g.n for g in graph.reducible}
    # the widest residual stream (the most slots) and a block group as wide: the block
    # group is cheapest down to its floor, then the stream's big steps are next
    stream = max(graph.reducible, key=lambda g: (g.n, len(g.slots))).id
    cheap = min((g for g in graph.reducible if g.n == n[stream]), key=lambda g: len(g.slots)).id
    weight = {gid: 100.0 for gid in n} | {cheap: 0.01, stream: 1.0}

    def damage(gid, k):
        return weight[gid] * (n[gid] - k) / n[gid]

    floor = {cheap: n[cheap] - 14}  # 14 block channels, then three stream ones overshoot
    kept = sensitivity_allocation(model, graph, damage, 0.1, floor=floor)
    counter = ParamCounter(model, graph)
    target = counter.total_before * 0.9
    assert counter(kept) <= target
    assert kept[stream] < n[stream]  # the overshooting step was taken
    for gid in n:
        if kept[gid] < n[gid]:
            assert counter({**kept, gid: kept[gid] + 1}) > target, gid


class TwoResolutions(nn.Module):
    """Two groups with the same parameters, one at 16× the positions of the other."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)  # its output group runs at 16×16
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)  # ... this one at 4×4
        self.c4 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        x = F.relu(self.c4(F.relu(self.c3(F.max_pool2d(x, 4)))))
        return self.fc(x.mean((2, 3)))


def test_a_flop_budget_spends_damage_per_flop_saved():
    from tuneless.allocation import sensitivity_allocation
    from tuneless.budget import flop_weights

    model = TwoResolutions().eval()
    x = torch.randn(1, 3, 16, 16)
    graph = find_groups(model, x)
    by_producer = {graph[g.id].producers[0].module: g.id for g in graph.reducible}
    high, low = by_producer["c2"], by_producer["c3"]

    def damage(gid, k):  # the high-resolution group hurts a little more per channel
        return (1.5 if gid == high else 1.0) * (8 - k) if gid in (high, low) else 100.0 * (8 - k)

    per_param = sensitivity_allocation(model, graph, damage, 0.2, floor={})
    per_flop = sensitivity_allocation(model, graph, damage, 0.2, floor={},
                                      weights=flop_weights(model, x))
    assert per_param[low] < per_param[high] == 8  # same parameters saved: least damage
    assert per_flop[high] < per_flop[low] == 8  # 16× the FLOPs saved per channel there
    assert 1 - param_count(model, graph, per_param) / param_count(model, graph) >= 0.2 - 1e-9


def _greedy_by_rescan(counter, levels, curves, kept, sparsity):
    """The greedy as first written: every group's step priced afresh at every step."""
    pos = {gid: 0 for gid in levels}
    target = counter.total_before * (1 - sparsity)
    while counter(kept) > target:
        best, best_score = None, math.inf
        for gid, i in pos.items():
            if i + 1 >= len(levels[gid]):
                continue
            saved = counter.saving(gid, levels[gid][i + 1], kept)
            score = (curves[gid][i + 1] - curves[gid][i]) / saved if saved > 0 else math.inf
            if score < best_score:
                best, best_score = gid, score
        pos[best] += 1
        kept[best] = levels[best][pos[best]]
    return kept


@pytest.mark.parametrize("budget", ["params", "flops"])
def test_greedy_reprices_only_the_groups_a_step_changes(budget):
    from tuneless.allocation import _greedy
    from tuneless.budget import ParamCounter, flop_weights
    from tuneless.zoo import build_model

    model = build_model("resnet20").eval()  # streams share every block's convolutions
    x = torch.randn(1, 3, 32, 32)
    graph = find_groups(model, x)
    weights = flop_weights(model, x) if budget == "flops" else None
    counter = ParamCounter(model, graph, weights)
    g = torch.Generator().manual_seed(0)
    levels = {gr.id: list(range(gr.n, max(1, gr.n // 4) - 1, -1)) for gr in graph.reducible}
    curves = {gid: torch.rand(len(lv), generator=g).mul(0.1).cumsum(0).tolist()
              for gid, lv in levels.items()}
    full = {gr.id: gr.n for gr in graph.groups}
    want = _greedy_by_rescan(counter, levels, curves, dict(full), 0.5)
    pos = {gid: levels[gid].index(want[gid]) for gid in levels}
    from tuneless.allocation import _refund

    want = _refund(counter, levels, curves, want, pos, counter.total_before * 0.5)
    assert _greedy(counter, levels, curves, dict(full), 0.5, 0.9) == want


def _allocation_measuring_every_depth(model, graph, damage, sparsity, floor):
    """sensitivity_allocation as it was: every depth of every group measured up front."""
    from tuneless.allocation import SENSITIVITY_LEVELS, _block_levels, _greedy, _interpolate
    from tuneless.budget import ParamCounter

    levels, curves = {}, {}
    for g in graph.reducible:
        lowest = max(floor.get(g.id, 1), math.ceil(g.n * 0.1), g.lowest(1))
        if lowest >= g.n:
            continue
        coarse, fine = _block_levels(g, [g.n, lowest, *(
            max(lowest, round(g.n * (1 - s))) for s in SENSITIVITY_LEVELS)])
        errs = [0.0] + [max(0.0, damage(g.id, k)) for k in coarse[1:]]
        for i in range(1, len(errs)):
            errs[i] = max(errs[i], errs[i - 1])
        levels[g.id], curves[g.id] = fine, _interpolate(coarse, errs, fine)
    return _greedy(ParamCounter(model, graph), levels, curves,
                   {g.id: g.n for g in graph.reducible}, sparsity, 0.9)


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.6])
def test_depths_measured_as_the_greedy_reaches_them_give_the_same_widths(sparsity):
    """The deeper depths are measured only where the greedy looks: the widths are those of
    measuring every depth of every group, from fewer trials (a group that fails a deeper
    trial stays whole, as one that fails its first)."""
    from tuneless.allocation import sensitivity_allocation
    from tuneless.reduce import MissedCoupling
    from tuneless.zoo import build_model

    model, x = build_model("resnet20").eval(), torch.randn(2, 3, 32, 32)
    graph = find_groups(model, x)
    g = torch.Generator().manual_seed(1)
    slope = {grp.id: float(torch.rand(1, generator=g)) * 10 for grp in graph.reducible}
    wobble = {grp.id: float(torch.rand(1, generator=g)) for grp in graph.reducible}

    def curve(gid, k):  # convex with a dip: the monotone fix and the segments both matter
        n = graph[gid].n
        r = (n - k) / n
        return slope[gid] * r * r + wobble[gid] * math.sin(9 * r)

    floor = {grp.id: grp.n // 2 for grp in graph.reducible}
    lazy, every = [], []

    def counted(calls):
        def damage(gid, k):
            calls.append((gid, k))
            return curve(gid, k)
        return damage

    want = _allocation_measuring_every_depth(model, graph, counted(every), sparsity, floor)
    assert sensitivity_allocation(model, graph, counted(lazy), sparsity, floor=floor) == want
    assert len(set(lazy)) == len(lazy) < len(every)  # each trial once, fewer of them

    # a group whose deeper trial does not run leaves the allocation, whole
    deep = max(want, key=lambda gid: graph[gid].n - want[gid])
    first_depth = {}

    def failing(gid, k):
        first_depth.setdefault(gid, k)
        if gid == deep and k != first_depth[gid]:
            raise MissedCoupling("trial")
        return curve(gid, k)

    kept = sensitivity_allocation(model, graph, failing, sparsity, floor=floor)
    assert kept[deep] == graph[deep].n


class _FlattenByView(nn.Module):
    """A conv net whose flatten is a `.view` of the feature map (fails on channels-last)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(self.conv(x).view(x.shape[0], -1))


class _ReadsTheLayout(nn.Module):
    """A model whose output depends on its input's memory layout (what the check guards)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return y.flatten(1) if y.is_contiguous() else -y.flatten(1)


def test_probes_go_channels_last_only_where_the_model_computes_the_same_on_them():
    from tuneless.allocation import (
        OutputDamage,
        _eval_forward,
        _output_tensor,
        channels_last_probes,
    )
    from tuneless.zoo import build_model

    torch.manual_seed(0)
    probe = torch.randn(4, 3, 8, 8)
    net = build_model("resnet20").eval()
    fast = channels_last_probes(net, probe)
    assert fast.is_contiguous(memory_format=torch.channels_last) and torch.equal(fast, probe)
    for model in (_FlattenByView().eval(), _ReadsTheLayout().eval()):
        assert channels_last_probes(model, probe) is probe
    gray = torch.randn(4, 1, 8, 8)  # one channel: both layouts are the same
    assert channels_last_probes(nn.Conv2d(1, 2, 3), gray) is gray
    # the damage measured on them is the one on the probes as they are
    x = torch.randn(2, 3, 32, 32)
    measure = OutputDamage(net, x, 8, 0)
    assert measure.probe.is_contiguous(memory_format=torch.channels_last)
    trial = build_model("resnet20").eval()
    with torch.no_grad():
        for p in trial.parameters():
            p.mul_(1.01)
    slow = OutputDamage(net, x, 8, 0)
    slow.probe = slow.probe.contiguous()
    slow.ref = _output_tensor(_eval_forward(net, slow.probe)).double()
    assert measure(trial) == pytest.approx(slow(trial), rel=1e-4)
