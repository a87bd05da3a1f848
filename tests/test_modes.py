"""Every entry point that runs a user's model leaves each module's train/eval mode as it
found it — a frozen BatchNorm inside a model in training mode stays frozen (a whole-model
`model.train(was)` would unfreeze it)."""

from __future__ import annotations

import pytest
import torch

import tuneless
from tuneless.bn_stats import reestimate_bn
from tuneless.data.loader import TensorDataset
from tuneless.evaluate import accuracy, check_runs, count_flops, latency_ms
from tuneless.graph.trace import trace
from tuneless.modelio import build_arch
from tuneless.modes import evaluating

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _mixed():
    model = build_arch("resnet20").train()
    model.bn1.eval()  # frozen by the user
    return model


def _modes(model):
    return {name: m.training for name, m in model.named_modules()}


CALLS = {
    "accuracy": lambda m: accuracy(m, TensorDataset(
        "random", torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8),
        torch.zeros(4, dtype=torch.long), [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3)),
    "check_runs": lambda m: check_runs(m, X),
    "count_flops": lambda m: count_flops(m, X[:1]),
    "latency_ms": lambda m: latency_ms(m, X[:1], repeats=1, warmup=0),
    "trace": lambda m: trace(m, X[:1]),
    "reestimate_bn": lambda m: reestimate_bn(m, X, inplace=True),
    "fold": lambda m: tuneless.fold(m, sparsity=0.3, example_inputs=X[:2]),
    "prune": lambda m: tuneless.prune(m, sparsity=0.3, example_inputs=X[:2]),
    "fold-refit": lambda m: tuneless.fold(m, sparsity=0.3, example_inputs=X[:2],
                                          repair="refit", data=X),
    "fold-match": lambda m: tuneless.fold(m, sparsity=0.3, example_inputs=X[:2],
                                          repair="match", data=X),
    "svd": lambda m: tuneless.svd(m, sparsity=0.3),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_modes_restored(call):
    model = _mixed()
    before = _modes(model)
    CALLS[call](model)
    assert _modes(model) == before


def test_evaluating_restores_after_an_error():
    model = _mixed()
    before = _modes(model)
    with pytest.raises(RuntimeError), evaluating(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("inside")
    assert _modes(model) == before


def test_evaluating_leaves_a_model_already_in_eval_mode_alone(monkeypatch):
    """No module walk to switch modes that are already eval (the allocation's trials run
    it hundreds of times); a model with any module in training mode is switched."""
    model = build_arch("resnet20").eval()
    calls = []
    monkeypatch.setattr(model, "train", lambda mode=True: calls.append(mode) or model)
    with evaluating(model) as m:
        assert m is model
    assert calls == []
    model.layer1.train()
    with evaluating(model):
        pass
    assert calls == [False] and model.layer1.training
