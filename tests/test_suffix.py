"""SuffixRunner: a trial model run from the first layer it changes equals its full run."""

import sys
from pathlib import Path

import pytest
import torch

from tuneless.graph import find_groups
from tuneless.reduce import reduce, selection
from tuneless.suffix import SuffixRunner
from tuneless.zoo import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent / "breadth"))
from graph_patterns import PATTERNS  # noqa: E402

CASES = [
    ("resnet20", lambda: build_model("resnet20"), (4, 3, 32, 32)),
    ("vgg11_bn", lambda: build_model("vgg11_bn", width=0.25, hidden=64), (4, 3, 32, 32)),
    ("lenet5", lambda: build_model("lenet5"), (4, 1, 28, 28)),
    ("concat", PATTERNS["concat"], (4, 3, 16, 16)),
    ("squeeze_excite", PATTERNS["squeeze_excite"], (4, 3, 16, 16)),
    ("shared_module", PATTERNS["shared_module"], (4, 3, 16, 16)),
    ("multi_output", PATTERNS["multi_output"], (4, 3, 16, 16)),
]


def first(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out


@pytest.mark.parametrize("name,make,shape", CASES, ids=[c[0] for c in CASES])
def test_every_group_trial_equals_its_full_forward(name, make, shape):
    model = make().eval()
    probe = torch.randn(*shape)
    graph = find_groups(model, probe[:2])
    runner = SuffixRunner(model, probe)
    for g in graph.reducible:
        for keep in (max(1, g.n // 2), g.n - 1):
            trial = reduce(model, graph, {g.id: selection(list(range(keep)), g.n)}, share=True)
            with torch.no_grad():
                want = first(trial(probe))
            got = first(runner.run(trial, g.modules))
            assert torch.allclose(got, want, atol=1e-6), (name, g.id, keep)


def test_trials_in_order_of_their_starts_continue_the_walk_of_the_prefix():
    model = build_model("resnet20").eval()
    probe = torch.randn(4, 3, 32, 32)
    graph = find_groups(model, probe[:2])
    runner = SuffixRunner(model, probe)
    groups = sorted(graph.reducible, key=lambda g: runner.start_of(g.modules))
    walked = []
    walk = runner._walk
    runner._walk = lambda interp, begin, end, env: walked.append((begin, end)) or walk(
        interp, begin, end, env)
    for g in groups + groups[:1]:  # the last one starts before the one before it
        trial = reduce(model, graph, {g.id: selection([0, 1], g.n)}, share=True)
        with torch.no_grad():
            want = first(trial(probe))
        assert torch.allclose(first(runner.run(trial, g.modules)), want, atol=1e-6)
    prefixes = [(b, e) for b, e in walked if e < len(runner.nodes)]
    starts = sorted({runner.start_of(g.modules) for g in groups})
    assert prefixes == list(zip([0, *starts[:-1]], starts))  # the revisit: a kept prefix


def test_an_earlier_start_walks_from_the_nearest_kept_prefix_or_the_beginning(monkeypatch):
    import tuneless.suffix as suffix

    model = build_model("resnet20").eval()
    probe = torch.randn(4, 3, 32, 32)
    graph = find_groups(model, probe[:2])
    groups = sorted(graph.reducible, key=lambda g: SuffixRunner(model, probe[:1]).start_of(
        g.modules))
    for budget, want_begin in ((1 << 40, "kept"), (0, 0)):
        monkeypatch.setattr(suffix, "PREFIX_BYTES", budget)
        runner = SuffixRunner(model, probe)
        walked = []
        walk = runner._walk
        runner._walk = (lambda interp, begin, end, env, seen=walked, walk=walk:
                        seen.append((begin, end)) or walk(interp, begin, end, env))
        order = [groups[0], groups[-1], groups[len(groups) // 2]]  # the third goes back
        for g in order:
            trial = reduce(model, graph, {g.id: selection([0, 1], g.n)}, share=True)
            with torch.no_grad():
                want = first(trial(probe))
            assert torch.allclose(first(runner.run(trial, g.modules)), want, atol=1e-6)
        last = [(b, e) for b, e in walked if e < len(runner.nodes)][-1]
        middle = runner.start_of(order[2].modules)
        begin = runner.start_of(order[0].modules) if want_begin == "kept" else 0
        assert last == (begin, middle), budget


class _InPlaceSkips(torch.nn.Module):
    """Residual blocks written `x.add_(block(x))` (traced as the in-place method; fx traces
    `x += ...` as an addition): running past a block changes the stream's tensor in place,
    the one a prefix holds."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.a1, self.a2 = torch.nn.Conv2d(8, 6, 3, padding=1), torch.nn.Conv2d(6, 8, 3, padding=1)
        self.b1, self.b2 = torch.nn.Conv2d(8, 6, 3, padding=1), torch.nn.Conv2d(6, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x.add_(self.a2(torch.relu(self.a1(torch.relu(x)))))
        x = x.add_(self.b2(torch.relu(self.b1(torch.relu(x)))))
        return self.fc(x.mean((2, 3)))


def test_a_prefix_is_not_changed_by_in_place_operations_after_it():
    model = _InPlaceSkips().eval()
    probe = torch.randn(4, 3, 12, 12)
    graph = find_groups(model, probe[:2])
    runner = SuffixRunner(model, probe)
    inner = sorted((g for g in graph.reducible if g.n == 6),
                   key=lambda g: runner.start_of(g.modules))
    assert len(inner) == 2
    for g in [inner[0], inner[0], inner[1], inner[0]]:  # again, further, back: kept prefix
        trial = reduce(model, graph, {g.id: selection([0, 1, 2], g.n)}, share=True)
        with torch.no_grad():
            want = first(trial(probe))
        assert torch.allclose(first(runner.run(trial, g.modules)), want, atol=1e-6)


def test_reference_modes_are_restored_and_later_groups_start_later():
    model = build_model("resnet20").train()
    probe = torch.randn(4, 3, 32, 32)
    graph = find_groups(model, probe[:2])
    runner = SuffixRunner(model, probe)
    starts = [runner.start_of(g.modules) for g in graph.reducible]
    assert max(starts) > min(starts) >= 0
    g = graph.reducible[-1]
    trial = reduce(model, graph, {g.id: selection([0, 1], g.n)}, share=True)
    runner.run(trial, g.modules)
    assert all(m.training for m in model.modules())
    assert model.bn1.num_batches_tracked == 0  # no statistics updated on the probes


class _LayerNorm2d(torch.nn.LayerNorm):
    """As torchvision's ConvNeXt has it: traced through, its size a constant in the graph."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias,
                                           self.eps)
        return x.permute(0, 3, 1, 2)


class _BakedSizes(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.n1 = torch.nn.Conv2d(3, 8, 3, padding=1), _LayerNorm2d(8)
        self.c2, self.fc = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Linear(8, 4)

    def forward(self, x):
        x = self.c2(torch.relu(self.n1(self.c1(x))))
        return self.fc(x.mean((2, 3)))


def test_a_graph_with_baked_sizes_is_measured_by_full_passes():
    """The shortened run fails on the trial (its graph holds the old size): the damage is
    still the trial's true one, and the sensitivity fold runs."""
    from tuneless.allocation import OutputDamage
    from tuneless.methods.fold import fold

    model = _BakedSizes().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = find_groups(model, x)
    measure = OutputDamage(model, x, 4, 0)
    for g in graph.reducible:
        trial = reduce(model, graph, {g.id: selection(list(range(g.n - 2)), g.n)}, share=True)
        assert measure(trial, g.modules) == pytest.approx(measure(trial))
    small = fold(model, sparsity=0.3, example_inputs=x, allocation="sensitivity",
                 repair="none", probe_images=4)
    assert small(x).shape == (2, 4)
