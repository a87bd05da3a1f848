"""Smoothness penalties: hand-computed values, invariances, gradients, classifier rule, λ forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from tuneless import SmoothPenalty, TunelessError
from tuneless.smooth import (
    layer_penalty,
    nuclear_norm,
    penalised_layers,
    penalty_for_training,
    penalty_value,
)
from tuneless.train import TrainConfig
from tuneless.zoo import build_model

torch.set_num_threads(1)  # the CPU is shared with training jobs; more threads only contend


class Tiny(nn.Module):
    """conv(3→4, RGB input axis is skipped) → conv(4→5) → linear(5→2) classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 1, bias=False)
        self.c2 = nn.Conv2d(4, 5, 1, bias=False)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(self.c2(self.c1(x)).mean((2, 3)))


def test_d1_hand_computed_on_a_matrix():
    w = torch.tensor([[1.0, 2.0, 4.0, 7.0], [0.0, 2.0, 2.0, 2.0]])
    # axis 0: (-1, 0, -2, -5) → 1+0+4+25 = 30; axis 1: (1, 2, 3) and (2, 0, 0) → 14 + 4 = 18
    assert layer_penalty(w, "d1", (0,)).item() == 30
    assert layer_penalty(w, "d1", (1,)).item() == 18
    assert layer_penalty(w, "d1").item() == 48


def test_d2_hand_computed_on_a_matrix():
    w = torch.tensor([[1.0, 2.0, 4.0, 7.0], [0.0, 2.0, 2.0, 2.0], [5.0, 0.0, 1.0, 1.0]])
    # axis 0: row0 - 2 row1 + row2 = (6, -2, 1, 4) → 36+4+1+16 = 57
    # axis 1: (1, 1), (-2, 0), (-6, 1) → 2 + 4 + 37 = 43
    assert layer_penalty(w, "d2", (0,)).item() == 57
    assert layer_penalty(w, "d2", (1,)).item() == 43


def test_d1_on_a_conv_kernel_sums_over_spatial_positions():
    w = torch.zeros(2, 4, 3, 3)
    w[1] = 1.0  # output axis: 36 differences of 1; input axis constant
    assert layer_penalty(w, "d1").item() == 36


def test_nuclear_norm_is_the_sum_of_singular_values():
    w = torch.diag(torch.tensor([3.0, -2.0, 0.5]))
    assert nuclear_norm(w).item() == pytest.approx(5.5)
    conv = torch.zeros(2, 1, 2, 2)
    conv[0, 0, 0, 0] = 4.0
    conv[1, 0, 1, 1] = 3.0
    assert layer_penalty(conv, "nuc").item() == pytest.approx(7.0)


def test_constant_weights_have_zero_d1_and_ramps_zero_d2():
    const = torch.full((6, 8, 3, 3), 0.7)
    assert layer_penalty(const, "d1").item() == 0
    o = torch.arange(6.0).view(6, 1, 1, 1)
    i = torch.arange(8.0).view(1, 8, 1, 1)
    ramp = (0.3 * o - 0.2 * i + 1.0).expand(6, 8, 3, 3)
    assert layer_penalty(ramp, "d2").item() == pytest.approx(0.0, abs=1e-9)
    assert layer_penalty(ramp, "d1").item() > 0


def test_short_axes_give_zero_not_an_error():
    assert layer_penalty(torch.ones(1, 1), "d1").item() == 0
    assert layer_penalty(torch.randn(2, 2), "d2").item() == 0


def test_classifier_only_input_axis_and_rgb_axis_skipped():
    layers = {layer.name: layer for layer in penalised_layers(Tiny())}
    assert layers["c1"].axes == (0,)  # 3 input channels: skipped
    assert layers["c2"].axes == (0, 1)
    assert layers["fc"].axes == (1,) and layers["fc"].classifier


def test_classifier_value_matches_a_hand_sum():
    m = Tiny()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
    expect = (layer_penalty(m.c1.weight, "d1", (0,)) + layer_penalty(m.c2.weight, "d1", (0, 1))
              + layer_penalty(m.fc.weight, "d1", (1,)))
    assert penalty_value(m, "d1").item() == pytest.approx(expect.item(), rel=1e-6)
    nuc = nuclear_norm(m.c1.weight) + nuclear_norm(m.c2.weight)  # classifier not in nuc
    assert penalty_value(m, "nuc").item() == pytest.approx(nuc.item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["d1", "d2", "nuc"])
def test_gradients_reach_every_penalised_weight(kind):
    torch.manual_seed(0)
    m = build_model("resnet20")
    penalty = SmoothPenalty(m, kind, lam=1e-3)
    loss = penalty(m)
    loss.backward()
    assert loss.item() > 0
    assert m.layer2[0].conv1.weight.grad.abs().sum() > 0
    assert m.fc.weight.grad.abs().sum() > 0 if kind != "nuc" else m.fc.weight.grad is None
    assert m.bn1.weight.grad is None


def test_penalty_step_makes_weights_smoother():
    torch.manual_seed(0)
    m = Tiny()
    penalty = SmoothPenalty(m, "d1", lam=1.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    before = penalty.value(m).item()
    for _ in range(5):
        opt.zero_grad()
        penalty(m).backward()
        opt.step()
    assert penalty.value(m).item() < 0.5 * before


def test_relative_lambda_equals_lambda_at_init_whatever_the_scale():
    torch.manual_seed(0)
    m = build_model("resnet20")
    for kind in ("d1", "d2", "nuc"):
        p = SmoothPenalty(m, kind, lam=0.3, relative=True)
        assert p(m).item() == pytest.approx(0.3, rel=1e-5)
    big = build_model("resnet20")
    with torch.no_grad():
        for q in big.parameters():
            q.mul_(10)
    raw = SmoothPenalty(big, "d2", lam=0.3)
    rel = SmoothPenalty(big, "d2", lam=0.3, relative=True)
    assert rel(big).item() == pytest.approx(0.3, rel=1e-5)
    assert raw(big).item() > 100 * rel(big).item()


def test_every_n_applies_scaled_penalty_on_every_nth_call():
    m = Tiny()
    full = SmoothPenalty(m, "nuc", lam=0.1)(m).item()
    sparse = SmoothPenalty(m, "nuc", lam=0.1, every=3)
    values = [sparse(m).item() for _ in range(6)]
    assert values[0] == pytest.approx(3 * full) and values[3] == pytest.approx(3 * full)
    assert values[1] == values[2] == values[4] == values[5] == 0
    assert sum(values) / 6 == pytest.approx(full)


def test_external_model_class_torchvision_resnet18():
    tv = pytest.importorskip("torchvision")
    m = tv.models.resnet18(weights=None, num_classes=10)
    layers = {layer.name: layer for layer in penalised_layers(m)}
    assert len(layers) == 21  # 20 convs (incl. 3 downsample) + fc
    assert layers["fc"].classifier and layers["fc"].axes == (1,)
    assert layers["conv1"].axes == (0,)
    p = SmoothPenalty(m, "d2", lam=0.5, relative=True)
    x = torch.randn(2, 3, 32, 32)
    loss = nn.functional.cross_entropy(m(x), torch.tensor([1, 2])) + p(m)
    loss.backward()
    assert m.layer3[0].downsample[0].weight.grad is not None
    assert math.isfinite(loss.item())


def test_penalty_for_training_uses_the_seeded_init_reference_and_leaves_rng_alone():
    cfg = TrainConfig(arch="resnet20", seed=3, smooth="d1", smooth_lambda=0.2,
                      smooth_relative=True, smooth_every=1)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    extra = penalty_for_training(cfg)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(3)
    m = build_model("resnet20", num_classes=10)
    assert extra(m).item() == pytest.approx(0.2, rel=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "d3"}, "unknown smoothness penalty"),
    ({"lam": -1.0}, "lam must be"),
    ({"lam": float("nan")}, "lam must be"),
    ({"every": 0}, "every must be"),
    ({"classifier": "head"}, "not a module"),
])
def test_bad_arguments_raise_tuneless_error(kwargs, message):
    with pytest.raises(TunelessError, match=message):
        SmoothPenalty(Tiny(), **kwargs)


def test_model_without_layers_and_mismatched_model_are_errors():
    with pytest.raises(TunelessError, match="no conv or linear"):
        SmoothPenalty(nn.Sequential(nn.ReLU()), "d1")
    p = SmoothPenalty(Tiny(), "d1", lam=1.0)
    with pytest.raises(TunelessError, match="built for a model with layer"):
        p(nn.Sequential(nn.Linear(4, 4)))
    zero = Tiny()
    with torch.no_grad():
        for q in zero.parameters():
            q.zero_()
    with pytest.raises(TunelessError, match="relative λ needs a non-zero"):
        SmoothPenalty(zero, "d1", lam=1.0, relative=True)
