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
            got = first(runner.run(trial, {s.module for s in g.slots}))
            assert torch.allclose(got, want, atol=1e-6), (name, g.id, keep)


def test_reference_modes_are_restored_and_later_groups_start_later():
    model = build_model("resnet20").train()
    probe = torch.randn(4, 3, 32, 32)
    graph = find_groups(model, probe[:2])
    runner = SuffixRunner(model, probe)
    starts = [runner.start_of({s.module for s in g.slots}) for g in graph.reducible]
    assert max(starts) > min(starts) >= 0
    g = graph.reducible[-1]
    trial = reduce(model, graph, {g.id: selection([0, 1], g.n)}, share=True)
    runner.run(trial, {s.module for s in g.slots})
    assert all(m.training for m in model.modules())
    assert model.bn1.num_batches_tracked == 0  # no statistics updated on the probes
