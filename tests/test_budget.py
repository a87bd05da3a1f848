"""Budget: analytic parameter counts and the sparsity → channel-count solver."""

import pytest
import torch

from tuneless.budget import budget_for_ratio, counts_for_ratio, param_count, solve
from tuneless.errors import TunelessError
from tuneless.graph import find_groups
from tuneless.reduce import reduce, selection
from tuneless.zoo import build_model


@pytest.fixture(scope="module")
def resnet():
    model = build_model("resnet20").eval()
    return model, find_groups(model, torch.randn(1, 3, 32, 32))


def test_param_count_matches_the_real_rewrite(resnet):
    model, graph = resnet
    assert param_count(model, graph) == sum(p.numel() for p in model.parameters())
    kept = {g.id: max(1, g.n // 3) for g in graph.reducible}
    small = reduce(model, graph, {g: selection(range(k), graph[g].n) for g, k in kept.items()})
    assert param_count(model, graph, kept) == sum(p.numel() for p in small.parameters())


@pytest.mark.parametrize("target", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_solver_hits_the_requested_sparsity(resnet, target):
    model, graph = resnet
    b = solve(model, graph, target)
    assert abs(b.sparsity - target) <= 0.01
    assert b.params_after == param_count(model, graph, b.kept)
    assert all(1 <= b.kept[g.id] <= g.n for g in graph.reducible)


def test_round_to_and_min_channels(resnet):
    model, graph = resnet
    b = solve(model, graph, 0.5, min_channels=4, round_to=4)
    assert all(k % 4 == 0 and k >= 4 for k in b.kept.values())
    assert abs(b.sparsity - 0.5) <= 0.01
    counts = counts_for_ratio(graph, 0.5, min_channels=12)
    assert {graph[g].n: k for g, k in counts.items()} == {16: 12, 32: 16, 64: 32}


def test_channel_ratio_zero_keeps_everything(resnet):
    model, graph = resnet
    b = budget_for_ratio(model, graph, 0.0)
    assert b.sparsity == 0.0 and all(b.kept[g.id] == g.n for g in graph.reducible)


def test_out_of_range_requests_are_errors(resnet):
    model, graph = resnet
    with pytest.raises(TunelessError, match="sparsity must be in"):
        solve(model, graph, 1.2)
    with pytest.raises(TunelessError, match="channel_ratio must be in"):
        counts_for_ratio(graph, -0.1)
    with pytest.raises(TunelessError, match="out of reach"):
        solve(model, graph, 0.9, min_channels=14)
    with pytest.raises(TunelessError, match="round_to"):
        solve(model, graph, 0.5, round_to=0)
    with pytest.raises(TunelessError, match="cannot keep"):
        param_count(model, graph, {graph.reducible[0].id: 0})


def test_residual_streams_are_the_groups_several_layers_write(resnet):
    _, graph = resnet
    streams = [g for g in graph.reducible if g.stream]
    assert len(streams) == 3  # one per stage of a projection-shortcut ResNet
    assert all(len({s.module for s in g.producers}) > 1 for g in streams)


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
def test_stream_share_scales_the_streams_ratio_only(resnet, share):
    model, graph = resnet
    b = solve(model, graph, 0.5, stream_share=share)
    assert abs(b.sparsity - 0.5) <= 0.01
    inner = [1 - b.kept[g.id] / g.n for g in graph.reducible if not g.stream]
    stream = [1 - b.kept[g.id] / g.n for g in graph.reducible if g.stream]
    if share == 0.0:
        assert all(r == 0 for r in stream) and min(inner) >= 0.5
    else:  # rounding and the ±1-point nudge aside, stream ratio ≈ share × inner ratio
        assert abs(sum(stream) / len(stream) - share * sum(inner) / len(inner)) < 0.08


def test_fold_and_prune_share_the_stream_default_and_reject_bad_shares(resnet):
    import tuneless
    from tuneless.budget import STREAM_SHARE

    model, graph = resnet
    x = torch.randn(2, 3, 32, 32)
    want = solve(model, graph, 0.4).kept
    for small in (tuneless.fold(model, sparsity=0.4, example_inputs=x, allocation="uniform"),
                  tuneless.prune(model, sparsity=0.4, example_inputs=x)):
        assert {int(k): v for k, v in small.tuneless_report["kept"].items()} == want
    assert 0 < STREAM_SHARE < 1
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(TunelessError, match="stream_share"):
            tuneless.fold(model, sparsity=0.4, example_inputs=x, stream_share=bad)
        with pytest.raises(TunelessError, match="stream_share"):
            tuneless.prune(model, sparsity=0.4, example_inputs=x, stream_share=bad)


def test_flop_weights_count_what_torchs_flop_counter_counts_at_any_widths(resnet):
    from tuneless.budget import flop_weights, param_counter
    from tuneless.evaluate import count_flops

    model, graph = resnet
    x = torch.randn(1, 3, 32, 32)
    cost = param_counter(model, graph, flop_weights(model, x))
    assert cost(None) == count_flops(model, x)
    kept = {g.id: max(1, g.n // 3) for g in graph.reducible}
    small = reduce(model, graph, {g: selection(range(k), graph[g].n) for g, k in kept.items()})
    assert cost(kept) == count_flops(small, x)


def test_a_flop_budget_removes_that_share_of_the_flops(resnet):
    from tuneless.budget import flop_weights
    from tuneless.evaluate import count_flops

    model, graph = resnet
    x = torch.randn(1, 3, 32, 32)
    b = solve(model, graph, 0.5, weights=flop_weights(model, x))
    small = reduce(model, graph, {g: selection(range(k), graph[g].n) for g, k in b.kept.items()})
    assert b.budget == "flops" and abs(b.sparsity - 0.5) <= 0.01
    assert b.flops_after == count_flops(small, x) and b.flops_before == count_flops(model, x)
    assert b.params_after == sum(p.numel() for p in small.parameters())
    with pytest.raises(TunelessError, match="unknown budget 'macs'"):
        import tuneless

        tuneless.fold(model, sparsity=0.5, budget="macs")


@pytest.mark.parametrize("round_to", [1, 8])
@pytest.mark.parametrize("flops", [False, True])
def test_the_budget_is_met_without_draining_one_group(round_to, flops):
    """The ratio's rounding is corrected across groups: under a FLOP budget a classifier's
    channels cost almost nothing, and chasing the last fraction of a point through them took
    a 512-wide group to 8 channels (the VGG at 50%, round_to=8)."""
    from tuneless.budget import NUDGE_SHARE, flop_weights

    model = build_model("vgg11_bn", width=0.5).eval()
    x = torch.randn(1, 3, 32, 32)
    graph = find_groups(model, x)
    for target in (0.1, 0.3, 0.5, 0.7):
        b = solve(model, graph, target, round_to=round_to,
                  weights=flop_weights(model, x) if flops else None)
        assert abs(b.sparsity - target) <= 0.01
        ratio = counts_for_ratio(graph, b.channel_ratio, round_to=round_to)
        for g in graph.reducible:
            step = round_to * max(1, -(-NUDGE_SHARE * g.n // round_to))
            assert b.kept[g.id] >= ratio[g.id] - step, (target, g.id, b.kept[g.id], ratio[g.id])


@pytest.mark.parametrize("method", ["fold", "prune"])
@pytest.mark.parametrize("allocation", ["uniform", "sensitivity"])
def test_fold_and_prune_meet_a_flop_budget(method, allocation):
    import tuneless
    from tuneless.evaluate import count_flops

    model = build_model("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    kw = {"probe_images": 4} if allocation == "sensitivity" else {}
    small = getattr(tuneless, method)(model, sparsity=0.4, budget="flops", example_inputs=x,
                                      allocation=allocation, **kw)
    r = small.tuneless_report
    ratio = count_flops(small, x) / count_flops(model, x)
    assert r["budget"] == "flops" and abs(ratio - 0.6) <= 0.011
    assert r["flops_after"] == count_flops(small, x)
    assert abs(r["achieved_sparsity"] - (1 - ratio)) < 1e-9


def test_a_flop_budget_on_a_language_model_is_refused_by_name():
    import tuneless

    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1)
    llm = transformers.LlamaForCausalLM(cfg).eval()
    for compress in (tuneless.fold, tuneless.prune):
        with pytest.raises(TunelessError, match="budget='flops' is for CNNs"):
            compress(llm, sparsity=0.2, budget="flops")
