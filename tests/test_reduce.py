"""reduce(): identity, exact pruning of dead channels, exact folding of duplicated channels."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tuneless.errors import TunelessError
from tuneless.graph import CONSUMER, find_groups
from tuneless.reduce import reduce, selection
from tuneless.zoo import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent / "breadth"))
from graph_patterns import PATTERNS  # noqa: E402


def randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics so that mistakes in running stats show up."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


CASES = [
    ("resnet20", lambda: build_model("resnet20"), (2, 3, 32, 32)),
    ("vgg11_bn", lambda: build_model("vgg11_bn", width=0.25, hidden=64), (2, 3, 32, 32)),
    ("mlp", lambda: build_model("mlp", width=0.1), (2, 1, 28, 28)),
    ("lenet5", lambda: build_model("lenet5"), (2, 1, 28, 28)),
    ("concat", PATTERNS["concat"], (2, 3, 16, 16)),
    ("squeeze_excite", PATTERNS["squeeze_excite"], (2, 3, 16, 16)),
    ("shared_module", PATTERNS["shared_module"], (2, 3, 16, 16)),
    ("multi_output", PATTERNS["multi_output"], (2, 3, 16, 16)),
]


def outputs(model, x):
    with torch.no_grad():
        y = model(x)
    return y if isinstance(y, tuple) else (y,)


@pytest.mark.parametrize("name,make,shape", CASES, ids=[c[0] for c in CASES])
def test_pruning_dead_channels_is_exact(name, make, shape):
    """Zero the consumer columns of the channels to drop: removing them changes nothing."""
    torch.manual_seed(0)
    model = randomise_norms(make())
    x = torch.randn(*shape)
    graph = find_groups(model, x)
    assert graph.reducible
    dead = copy.deepcopy(model)
    decisions = {}
    for g in graph.reducible:
        keep = torch.randperm(g.n)[: max(1, g.n // 2)]
        decisions[g.id] = selection(keep, g.n)
        drop = sorted(set(range(g.n)) - set(keep.tolist()))
        for s in g.consumers:
            t = s.tensor(dead).detach()
            for c in drop:
                t.narrow(s.axis, (s.offset + c) * s.block, s.block).zero_()
    small = reduce(model, graph, decisions)
    for a, b in zip(outputs(dead, x), outputs(small, x)):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,make,shape", CASES[:4], ids=[c[0] for c in CASES[:4]])
def test_duplicated_channels_fold_back_exactly(name, make, shape):
    """Widen every group with exact duplicates (consumers halved), then fold with the
    cluster-mean / cluster-sum rule: both steps keep the outputs, and sizes come back."""
    model = randomise_norms(make())
    x = torch.randn(*shape)
    graph = find_groups(model, x)
    widen = {}
    for g in graph.reducible:
        eye = torch.eye(g.n)
        widen[g.id] = (torch.cat([eye, eye]), torch.cat([eye, eye], 1) / 2)
    wide = reduce(model, graph, widen)
    assert torch.allclose(outputs(wide, x)[0], outputs(model, x)[0], atol=1e-5)
    wide_graph = find_groups(wide, x)
    fold = {}
    for g in wide_graph.reducible:
        n = g.n // 2
        U = torch.cat([torch.eye(n), torch.eye(n)])  # (2n × n) assignment, clusters of 2
        M = torch.linalg.inv(U.t() @ U) @ U.t()  # D⁻¹Uᵀ: the cluster mean
        fold[g.id] = (M, U)
    back = reduce(wide, wide_graph, fold)
    assert torch.allclose(outputs(back, x)[0], outputs(model, x)[0], atol=1e-5)
    assert [p.shape for p in back.parameters()] == [p.shape for p in model.parameters()]


def test_identity_decisions_reproduce_the_model_and_update_attributes():
    model = randomise_norms(build_model("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    graph = find_groups(model, x)
    same = reduce(model, graph, {g.id: selection(range(g.n), g.n) for g in graph.reducible})
    assert torch.equal(same(x), model(x))
    g = next(g for g in graph.reducible if any(s.module == "layer2.0.conv1"
                                               for s in g.producers))
    small = reduce(model, graph, {g.id: selection([0, 5, 9], g.n)})
    conv, bn, nxt = small.layer2[0].conv1, small.layer2[0].bn1, small.layer2[0].conv2
    assert (conv.out_channels, bn.num_features, nxt.in_channels) == (3, 3, 3)
    assert torch.equal(conv.weight, model.layer2[0].conv1.weight[[0, 5, 9]])
    assert torch.equal(bn.running_var, model.layer2[0].bn1.running_var[[0, 5, 9]])
    assert torch.equal(nxt.weight, model.layer2[0].conv2.weight[:, [0, 5, 9]])
    assert small(x).shape == (2, 10)


def test_depthwise_conv_groups_follow_the_channel_count():
    model = PATTERNS["squeeze_excite"]().eval()
    x = torch.randn(2, 3, 16, 16)
    graph = find_groups(model, x)
    g = next(g for g in graph.reducible if any(s.depthwise for s in g.slots))
    small = reduce(model, graph, {g.id: selection(range(0, 16, 2), 16)})
    dw = small.dw[0]
    assert dw.groups == dw.in_channels == dw.out_channels == 8
    assert small.fc2.out_channels == 8 and small.fc1.in_channels == 8
    assert small(x).shape == (2, 6)


def test_input_model_is_never_modified():
    model = build_model("resnet20").eval()
    state = copy.deepcopy(model.state_dict())
    graph = find_groups(model, torch.randn(1, 3, 32, 32))
    reduce(model, graph, {g.id: selection([0], g.n) for g in graph.reducible})
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.conv1.out_channels == 16


def test_bad_decisions_are_one_line_errors():
    model = build_model("resnet20").eval()
    graph = find_groups(model, torch.randn(1, 3, 32, 32))
    fixed = graph.fixed[0]
    with pytest.raises(TunelessError, match="is fixed"):
        reduce(model, graph, {fixed.id: selection([0], fixed.n)})
    g = graph.reducible[0]
    with pytest.raises(TunelessError, match="need M"):
        reduce(model, graph, {g.id: (torch.ones(2, g.n + 1), torch.ones(g.n + 1, 2))})
    with pytest.raises(TunelessError, match="no channel group"):
        reduce(model, graph, {999: selection([0], 4)})
    with pytest.raises(TunelessError, match="invalid channel selection"):
        selection([0, 0], 4)
    assert all(s.kind != CONSUMER or s.axis == 1 for _, s in graph.slots())


def test_kept_indices_are_shorthand_for_a_selection():
    model = randomise_norms(build_model("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    graph = find_groups(model, x)
    keep = {g.id: torch.arange(0, g.n, 3) for g in graph.reducible}
    a = reduce(model, graph, keep)
    b = reduce(model, graph, {gid: selection(k, graph[gid].n) for gid, k in keep.items()})
    assert torch.equal(a(x), b(x))
    with pytest.raises(TunelessError, match="invalid channel selection"):
        reduce(model, graph, {graph.reducible[0].id: torch.tensor([0, 99])})


@pytest.mark.parametrize("name,make,shape", CASES, ids=[c[0] for c in CASES])
def test_shared_trial_models_equal_deep_copies_and_leave_the_input_alone(name, make, shape):
    """reduce(share=True) (the allocation's trial models): the same function as the deep
    copy, the input's tensors and sizes untouched, even after the trial's new tensors are
    modified in place (as AR rescales γ)."""
    model = randomise_norms(make())
    x = torch.randn(*shape)
    graph = find_groups(model, x)
    state = copy.deepcopy(model.state_dict())
    sizes = [(n, m.weight.shape) for n, m in model.named_modules() if hasattr(m, "weight")]
    g = next(iter(graph.reducible))
    decision = selection(list(range(0, g.n, 2)), g.n)
    deep, shared = reduce(model, graph, {g.id: decision}), reduce(model, graph, {g.id: decision},
                                                                   share=True)
    for a, b in zip(outputs(deep, x), outputs(shared, x), strict=True):
        assert torch.equal(a, b)
    mine = {k: t for k, t in shared.state_dict().items()
            if t.data_ptr() != model.state_dict()[k].data_ptr()}
    assert {k for k, t in shared.state_dict().items() if t.shape != state[k].shape} <= set(mine)
    for t in mine.values():
        if t.is_floating_point():
            t.mul_(2.0)  # as AR rescales the group's own γ
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert sizes == [(n, m.weight.shape) for n, m in model.named_modules() if hasattr(m, "weight")]


def test_labels_decision_rewrites_like_the_dense_maps():
    """Merge (labels only) gives bit-identical tensors to merge()'s (M, U), grouped convs too."""
    from tuneless.cluster import cluster
    from tuneless.decisions import Merge, merge
    from tuneless.zoo import build_model

    sys.path.insert(0, str(Path(__file__).resolve().parent / "breadth"))
    from graph_patterns import GroupedBottleneck

    for model, x in ((build_model("resnet20").eval(), torch.randn(2, 3, 32, 32)),
                     (GroupedBottleneck().eval(), torch.randn(2, 3, 16, 16))):
        graph = find_groups(model, x)
        dense, labels = {}, {}
        for g in graph.reducible:
            c = cluster(g.features(model), g.n // 2 // g.blocks * g.blocks or g.blocks,
                        blocks=g.blocks, seed=0)
            dense[g.id], labels[g.id] = merge(c.labels, c.k), Merge(c.labels, c.k)
        a, b = reduce(model, graph, dense), reduce(model, graph, labels)
        assert all(torch.equal(p, q) for p, q in
                   zip(a.state_dict().values(), b.state_dict().values()))
        M, U = labels[graph.reducible[0].id]  # unpacks like the pair
        assert torch.equal(M, dense[graph.reducible[0].id][0])
    with pytest.raises(TunelessError, match="each of 3 clusters"):
        Merge(torch.tensor([0, 0, 2]), 3)


def test_a_coupling_the_analysis_misses_is_a_one_line_error_not_a_broken_model():
    """A channel count read from one tensor and used to split another (FocalNet's
    modulation does this): the analysis cannot see the link. Uniform widths reduce it and
    the model does not run: fold/prune say so instead of returning it. Measured widths try
    each group alone first: the coupled group's trials fail, so it stays whole."""
    import tuneless
    from tests.graph.test_value_trace import SizeRead

    model = SizeRead(in_python=False).eval()  # plain fx: no probe, the later guards
    x = torch.randn(2, 3, 4, 4)
    for compress in (tuneless.prune, tuneless.fold):
        with pytest.raises(TunelessError, match="does not run on the example input"):
            compress(model, sparsity=0.3, example_inputs=x, allocation="uniform")
        small = compress(model, sparsity=0.2, example_inputs=x, allocation="sensitivity")
        assert small.a.out_channels == 8 and small.m1.out_channels < 16
        assert small(x).shape == (2, 4, 4, 4)
