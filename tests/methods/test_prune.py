"""Pruning baselines: which channels L1/L2 keep, random seeding, magnitude zeros, errors."""

import copy

import pytest
import torch
import torch.nn as nn

import tuneless
from tuneless.errors import TunelessError, UnsupportedModelError
from tuneless.methods import get_method
from tuneless.methods.prune import magnitude_prune, prune, prune_l1, prune_random
from tuneless.zoo import build_model

X = torch.randn(2, 1, 28, 28)


def mlp_with_weak_channels():
    """A 3-layer MLP whose first hidden layer has 8 clearly weak channels (tiny in/out)."""
    model = build_model("mlp", width=0.05).eval()  # 26 hidden channels
    lin, nxt = model.net[1], model.net[4]
    with torch.no_grad():
        lin.weight[:8] *= 1e-3
        nxt.weight[:, :8] *= 1e-3
        model.net[2].weight[:8] *= 1e-3
    return model


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_norm_criteria_drop_the_weakest_channels(criterion):
    model = mlp_with_weak_channels()
    small = prune(model, channel_ratio=8 / 26, criterion=criterion, example_inputs=X)
    kept = small.net[1].weight
    assert kept.shape[0] == 18
    # the surviving rows are exactly the 18 strong ones, in their original order
    assert torch.equal(kept, model.net[1].weight[8:])


def test_sparsity_is_reached_and_reported():
    model = build_model("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    small = tuneless.prune(model, sparsity=0.5, criterion="l2", example_inputs=x)
    r = small.tuneless_report
    n_before = sum(p.numel() for p in model.parameters())
    n_after = sum(p.numel() for p in small.parameters())
    assert abs(r["achieved_sparsity"] - 0.5) <= 0.01
    assert (r["params_before"], r["params_after"]) == (n_before, n_after)
    assert abs(1 - n_after / n_before - 0.5) <= 0.01
    assert r["physically_smaller"] is True
    assert small(x).shape == (1, 10)


def test_random_pruning_is_seeded_and_registry_names_resolve():
    model = build_model("mlp", width=0.05).eval()
    a = prune_random(model, channel_ratio=0.5, example_inputs=X, seed=3)
    b = get_method("prune-random")(model, channel_ratio=0.5, example_inputs=X, seed=3)
    c = prune_random(model, channel_ratio=0.5, example_inputs=X, seed=4)
    assert torch.equal(a.net[1].weight, b.net[1].weight)
    assert not torch.equal(a.net[1].weight, c.net[1].weight)
    assert get_method("prune-l1") is prune_l1


def test_zoo_model_needs_no_example_input_and_ratio_zero_is_identity():
    model = build_model("lenet5").eval()
    model.tuneless_arch = {"ref": "zoo:lenet5", "kwargs": {}}
    same = prune_l1(model, channel_ratio=0.0)
    assert torch.equal(same(X), model(X))
    assert same.tuneless_report["achieved_sparsity"] == 0.0


def test_input_model_is_untouched():
    model = build_model("mlp", width=0.05).eval()
    state = copy.deepcopy(model.state_dict())
    prune_l1(model, sparsity=0.4, example_inputs=X)
    magnitude_prune(model, sparsity=0.4)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_zeros_weights_but_keeps_shapes(scope):
    model = build_model("lenet5").eval()
    small = magnitude_prune(model, sparsity=0.6, scope=scope)
    assert [p.shape for p in small.parameters()] == [p.shape for p in model.parameters()]
    total = sum(p.numel() for p in small.parameters())
    zeros = sum(int((p == 0).sum()) for p in small.parameters())
    assert abs(zeros / total - 0.6) < 0.005
    r = small.tuneless_report
    assert r["physically_smaller"] is False and "not physically smaller" in r["note"]
    assert abs(r["achieved_sparsity"] - 0.6) < 0.005
    if scope == "global":  # one threshold: every kept weight beats every removed one
        ws = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        new = [m.weight for m in small.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        kept = torch.cat([w[n != 0].abs() for w, n in zip(ws, new)])
        gone = torch.cat([w[n == 0].abs() for w, n in zip(ws, new)])
        assert kept.min() >= gone.max()


def test_bad_requests_are_clear_errors():
    model = build_model("mlp", width=0.05).eval()
    with pytest.raises(TunelessError, match="exactly one of"):
        prune(model, sparsity=0.3, channel_ratio=0.3, example_inputs=X)
    with pytest.raises(TunelessError, match="unknown criterion"):
        prune(model, sparsity=0.3, criterion="taylor", example_inputs=X)
    with pytest.raises(TunelessError, match="input shape of this model is unknown"):
        prune(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), sparsity=0.3)
    with pytest.raises(UnsupportedModelError, match="nothing to reduce"):
        prune(nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), sparsity=0.3,
              example_inputs=torch.randn(1, 3, 2, 2))
    with pytest.raises(TunelessError, match="sparsity must be in"):
        magnitude_prune(model, sparsity=1.5)
    with pytest.raises(TunelessError, match="unstructured"):
        magnitude_prune(model, channel_ratio=0.5)
