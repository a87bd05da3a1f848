"""Group discovery: residual unions, flatten blocks, norms, concat offsets, fixed reasons."""

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tuneless.errors import UnsupportedModelError
from tuneless.graph import CONSUMER, NORM, PRODUCER, find_groups
from tuneless.reduce import reduce, selection
from tuneless.zoo import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "breadth"))
from graph_patterns import PATTERNS  # noqa: E402
from option_a_resnet import resnet20 as resnet20_option_a  # noqa: E402

X32 = torch.randn(2, 3, 32, 32)


def group_of(graph, module, param="weight", kind=PRODUCER):
    hits = [g for g in graph for s in g.slots
            if s.module == module and s.param == param and s.kind == kind]
    assert len(hits) == 1, (module, param, kind, len(hits))
    return hits[0]


def test_resnet20_residual_stream_is_one_group_per_stage():
    graph = find_groups(build_model("resnet20"), X32)
    stream = group_of(graph, "conv1")
    assert stream.n == 16 and stream.reducible
    producers = {s.module for s in stream.producers}
    assert producers == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    consumers = {s.module for s in stream.consumers}
    assert {"layer1.0.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"} <= consumers
    stage3 = group_of(graph, "layer3.0.shortcut.0")
    assert stage3 is group_of(graph, "layer3.2.conv2") and stage3.n == 64
    assert {s.module for s in stage3.consumers} == {"layer3.1.conv1", "layer3.2.conv1", "fc"}
    # 9 inner groups + 3 residual streams are reducible; input and logits are fixed
    assert len(graph.reducible) == 12 and len(graph.fixed) == 2
    assert any("network output" in r for g in graph.fixed for r in g.reasons)


def test_norm_slots_record_the_producer_that_feeds_them():
    graph = find_groups(build_model("resnet20"), X32)
    g = group_of(graph, "layer1.0.conv1")
    norms = {(s.module, s.param): s.producer for s in g.norms}
    assert set(norms) == {("layer1.0.bn1", p)
                          for p in ("weight", "bias", "running_mean", "running_var")}
    assert set(norms.values()) == {"layer1.0.conv1"}


class _ReluThenNorm(nn.Module):
    """conv → activation → BN, the activation spelled in the given way (Keras order)."""

    def __init__(self, act: str) -> None:
        super().__init__()
        self.conv, self.bn, self.out = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)
        self.act, self.relu, self.leaky = act, nn.ReLU(), nn.LeakyReLU(0.1)

    def forward(self, x):
        y = self.conv(x)
        y = {"module": lambda: self.relu(y), "leaky": lambda: self.leaky(y),
             "function": lambda: F.relu(y), "torch": lambda: torch.relu(y),
             "method": lambda: y.relu(), "silu": lambda: F.silu(y)}[self.act]()
        return self.out(self.bn(y))


@pytest.mark.parametrize("act", ["module", "leaky", "function", "torch", "method", "silu"])
def test_a_norm_after_a_relu_records_the_layer_before_it(act):
    g = group_of(find_groups(_ReluThenNorm(act), X32), "conv")
    (weight,) = [s for s in g.norms if s.param == "weight"]
    assert weight.producer is None  # not directly: BN fusion must not use it
    assert weight.relu_producer == (None if act == "silu" else "conv")  # SiLU: not homogeneous


def test_flatten_into_linear_is_a_block_consumer():
    model = build_model("vgg11_bn", width=0.25, hidden=32)
    graph = find_groups(model, X32)  # 1×1 map before flatten: one column per channel
    last = group_of(graph, "features.25")
    (fc,) = [s for s in last.consumers if s.module == "classifier.1"]
    assert fc.block == 1 and fc.axis == 1 and last.reducible
    graph = find_groups(PATTERNS["multi_output"](), torch.randn(2, 3, 16, 16))
    body = group_of(graph, "body.1.0")  # view(n, -1) of a 4×4 map: blocks of 16 columns
    blocks = {s.module: s.block for s in body.consumers}
    assert blocks == {"cls": 16, "aux": 1}


def test_mlp_batchnorm1d_and_lenet_flatten():
    graph = find_groups(build_model("mlp", width=0.1), torch.randn(2, 1, 28, 28))
    g = group_of(graph, "net.1")
    assert {s.module for s in g.norms} == {"net.2"} and g.reducible
    lenet = find_groups(build_model("lenet5"), torch.randn(2, 1, 28, 28))
    conv2 = group_of(lenet, "features.3")
    assert [s.block for s in conv2.consumers] == [25]


def test_concat_places_groups_side_by_side():
    graph = find_groups(PATTERNS["concat"](), torch.randn(2, 3, 16, 16))
    a, b = group_of(graph, "a.0"), group_of(graph, "b.0")
    (sa,) = [s for s in a.consumers if s.module == "mix.0"]
    (sb,) = [s for s in b.consumers if s.module == "mix.0"]
    assert (sa.offset, sb.offset) == (0, 8) and a.n == 8 and b.n == 16


def test_depthwise_conv_and_squeeze_excite_join_one_group():
    graph = find_groups(PATTERNS["squeeze_excite"](), torch.randn(2, 3, 16, 16))
    g = group_of(graph, "stem.0")
    assert {s.module for s in g.producers} == {"stem.0", "fc2", "dw.0"}
    assert any(s.depthwise for s in g.producers)
    assert g.reducible


def test_channels_last_layernorm_groupnorm_and_layer_scale():
    graph = find_groups(PATTERNS["channels_last"](), torch.randn(2, 3, 16, 16))
    g = group_of(graph, "stem")
    kinds = {(s.kind, s.module, s.param) for s in g.slots}
    assert {(NORM, "ln", "weight"), (NORM, "gn", "weight"), (NORM, "", "scale"),
            (CONSUMER, "up", "weight"), (PRODUCER, "down", "weight")} <= kinds
    assert g.reducible


@pytest.mark.parametrize("pattern,module,word", [
    ("split", "stem.0", "chunk"), ("unknown_op", "stem.0", "einsum"),
])
def test_unknown_ops_fix_their_channels_with_a_reason(pattern, module, word):
    graph = find_groups(PATTERNS[pattern](), torch.randn(2, 3, 16, 16))
    g = group_of(graph, module)
    assert g.fixed and not g.reducible
    assert any(word in r for r in g.reasons), g.reasons
    assert graph.reducible  # the rest of the model stays reducible


def test_groupnorm_with_groups_of_several_channels_shrinks_block_by_block():
    torch.manual_seed(0)
    model, x = PATTERNS["grouped_norm"]().eval(), torch.randn(2, 3, 16, 16)
    graph = find_groups(model, x)
    g = group_of(graph, "stem")
    assert g.reducible and g.blocks == 4 and g.lowest() == 4
    assert (NORM, "gn", "weight") in {(s.kind, s.module, s.param) for s in g.slots}
    whole = reduce(model, graph, {g.id: selection(list(range(16)), 16)})
    with torch.no_grad():
        assert torch.allclose(whole(x), model(x), atol=1e-6)  # all channels: the same model
    keep = [0, 1, 4, 5, 8, 9, 12, 13]  # two of each norm group's four
    small = reduce(model, graph, {g.id: selection(keep, 16)})
    assert (small.gn.num_groups, small.gn.num_channels) == (4, 8)
    with torch.no_grad():  # each norm group normalises its own two kept channels
        h = model.stem(x)[:, keep]
        want = F.group_norm(h, 4, model.gn.weight[keep], model.gn.bias[keep], model.gn.eps)
        assert torch.allclose(small.gn(small.stem(x)), want, atol=1e-6)


def test_groupnorm_reading_a_concatenation_is_fixed_with_a_reason():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.gn, self.c = nn.GroupNorm(4, 16), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.c(self.gn(torch.cat([self.a(x), self.b(x)], 1)))

    graph = find_groups(Cat().eval(), torch.randn(1, 3, 8, 8))
    g = group_of(graph, "a")
    assert g.fixed and any("GroupNorm" in r for r in g.reasons), g.reasons


def test_option_a_padding_shortcut_splits_the_streams():
    """F.pad(x, (0, 0, 0, 0, 8, 8)) lays stage 2's stream out as [zeros | stage 1 | zeros]:
    the stage-1 channels stay one group through all three stages (reducible), the zero
    channels, whose number the lambda hard-codes, are fixed with a reason naming the op."""
    graph = find_groups(resnet20_option_a(), X32)
    stem = group_of(graph, "conv1")
    assert stem.reducible and stem.n == 16
    offsets = {s.module: s.offset for s in stem.slots if s.kind == PRODUCER}
    assert offsets["layer2.2.conv2"] == 8 and offsets["layer3.2.conv2"] == 24
    writers = [g for g in graph for s in g.slots
               if s.module == "layer2.0.conv2" and s.kind == PRODUCER]
    assert sorted(g.n for g in writers) == [8, 8, 16]  # [zeros | stage 1 | zeros]
    for zeros in (g for g in writers if g is not stem):
        assert zeros.fixed and any("F.pad" in r and "zero channels" in r for r in zeros.reasons)
    assert len(graph.reducible) == 10  # the blocks' inner channels and the stage-1 stream


@pytest.mark.parametrize("make", [lambda: build_model("resnet20a"), resnet20_option_a],
                         ids=["pad-after", "pad-both-sides"])
def test_option_a_stream_merge_is_exact_for_duplicate_channels(make):
    """Channel 1 of the stage-1 stream made a copy of channel 0 in every layer that writes
    it (stem, every block's conv2 + BN in all stages, at each stage's offset): merging the
    two through the split stream groups must leave the function unchanged."""
    from tuneless.decisions import merge
    from tuneless.reduce import reduce

    torch.manual_seed(0)
    model = make().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.1)
    graph = find_groups(model, X32)
    stream = group_of(graph, "conv1")
    with torch.no_grad():
        for s in stream.slots:
            if s.kind in (PRODUCER, NORM):
                t = getattr(model.get_submodule(s.module), s.param)
                t.narrow(s.axis, s.offset + 1, 1).copy_(t.narrow(s.axis, s.offset, 1))
        before = model(X32)
        labels = torch.tensor([0, 0, *range(1, stream.n - 1)])
        small = reduce(copy.deepcopy(model), graph, {stream.id: merge(labels)})
        after = small(X32)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert torch.allclose(after, before, atol=1e-5, rtol=1e-4)


def test_grouped_conv_groups_shrink_block_by_block_and_unknown_weighted_module_is_fixed():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
                          nn.Conv2d(8, 8, 1), nn.Identity(), nn.Conv2d(8, 4, 1))
    graph = find_groups(model, torch.randn(1, 3, 16, 16))
    into, out = group_of(graph, "0"), group_of(graph, "1")
    assert into.reducible and into.blocks == 2 and out.reducible and out.blocks == 2
    assert [s.groups for s in into.consumers] == [2]
    assert "2 equal blocks" in into.describe()
    assert group_of(graph, "3").reducible and group_of(graph, "3").blocks == 1
    # a grouped conv reading a concatenation keeps its input whole
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.g, self.head = nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(self.g(torch.cat([self.a(x), self.b(x)], 1)))

    g = find_groups(Cat(), torch.randn(1, 3, 8, 8))
    assert any("concatenation" in r for r in group_of(g, "a").reasons)
    assert group_of(g, "g").reducible and group_of(g, "g").blocks == 2
    mha = nn.Sequential(nn.Linear(6, 8), nn.MultiheadAttention(8, 2, batch_first=True))

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = mha

        def forward(self, x):
            h = self.m[0](x)
            return self.m[1](h, h, h)[0]

    g = find_groups(Wrap(), torch.randn(1, 5, 6))
    assert any("MultiheadAttention" in r for r in group_of(g, "m.0").reasons)


def test_input_model_is_untouched_and_mode_restored():
    model = build_model("resnet20")
    model.train()
    before = copy.deepcopy(model.state_dict())
    find_groups(model, X32)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_untraceable_model_gives_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow cannot be traced
                return self.c(x)
            return self.c(-x)

    with pytest.raises(UnsupportedModelError, match="cannot trace Branchy"):
        find_groups(Branchy(), X32)
    with pytest.raises(UnsupportedModelError, match="does not run on the example input"):
        find_groups(build_model("resnet20"), torch.randn(1, 5, 32, 32))


def test_tied_weights_are_fixed():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 4)
            self.c, self.d = nn.Linear(4, 6), nn.Linear(6, 2)
            self.c.weight = self.a.weight

        def forward(self, x):
            return self.d(torch.relu(self.c(self.b(torch.relu(self.a(x))))))

    graph = find_groups(Tied(), torch.randn(1, 4))
    assert not graph.reducible
    assert any("tied" in r for r in group_of(graph, "a").reasons)


def test_conv_subclass_with_same_padding_folds_like_its_module():
    from graph_patterns import StdConv2d

    graph = find_groups(PATTERNS["same_padding"](), torch.randn(2, 3, 16, 16))
    inner = group_of(graph, "expand")
    assert inner.reducible and inner.n == 48
    assert {s.module for s in inner.producers} == {"expand", "dw"}  # depthwise joins
    assert {s.module for s in inner.consumers} == {"project"}
    stream = group_of(graph, "stem")
    assert stream is group_of(graph, "project") and stream.reducible
    std = nn.Sequential(nn.Conv2d(3, 8, 3), StdConv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    g = find_groups(std, X32)
    assert not group_of(g, "0").reducible  # read by a weight-standardised conv
    assert any("not a module's own parameter" in r for r in group_of(g, "0").reasons)
    bn = group_of(graph, "bn1", kind=NORM)
    assert {s.producer for s in bn.slots if s.kind == NORM and s.module == "bn1"} == {"expand"}


class _TokenMLPWithBN(nn.Module):
    """LeViT's pattern: a BatchNorm1d over the flattened tokens, reshaped back as the
    linear's output (reshape_as / view_as the tensor that carries the same channels)."""

    def __init__(self, target: str = "own") -> None:
        super().__init__()
        self.up, self.bn, self.down = nn.Linear(8, 12), nn.BatchNorm1d(12), nn.Linear(12, 8)
        self.side, self.side_down = nn.Linear(8, 12), nn.Linear(12, 8)
        self.register_buffer("frozen", torch.zeros(2, 5, 12))
        self.target = target  # "own", "side" (another linear's output) or "frozen" (a buffer)

    def forward(self, x):
        h = self.up(x)
        target = {"own": h, "frozen": self.frozen}.get(self.target)
        side = self.side(x)
        h = self.bn(h.flatten(0, 1)).reshape_as(side if target is None else target).relu()
        return self.down(h.view_as(h)) + self.side_down(side)


def test_reshape_as_a_tensor_couples_the_channels_it_takes_the_shape_of():
    import tuneless

    x = torch.randn(2, 5, 8)
    model = _TokenMLPWithBN().eval()
    model.bn.running_mean.uniform_(-1, 1)
    graph = find_groups(model, x)
    g = group_of(graph, "up")
    assert g.reducible and {s.module for s in g.norms} == {"bn"}
    assert group_of(graph, "side") is not g  # the side branch is a space of its own here
    small = tuneless.prune(model, channel_ratio=0.5, example_inputs=x)
    assert small.up.out_features == 6 and small(x).shape == (2, 5, 8)
    same = tuneless.prune(model, channel_ratio=0.0, example_inputs=x)
    assert torch.equal(same(x), model(x))
    coupled = find_groups(_TokenMLPWithBN("side").eval(), x)  # reshaped as side's output:
    assert group_of(coupled, "up") is group_of(coupled, "side")  # one size, one group
    fixed = group_of(find_groups(_TokenMLPWithBN("frozen").eval(), x), "up")
    assert fixed.fixed and any("reshapes to the shape" in r for r in fixed.reasons)
