"""SVD compression: full-rank identity, budget accuracy, break-even, parameter drop, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from tuneless import TunelessError, UnsupportedModelError
from tuneless.evaluate import count_params
from tuneless.methods import get_method
from tuneless.methods.svd import factorise_layer, svd, thin_svd
from tuneless.zoo import build_model

torch.set_num_threads(1)  # the CPU is shared with training jobs; more threads only contend


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("conv, shape", [
    (nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=True), (2, 6, 11, 11)),
    (nn.Conv2d(5, 7, 3, stride=1, padding=2, dilation=2, bias=True), (2, 5, 9, 9)),
    (nn.Conv2d(8, 4, (3, 5), stride=(2, 1), padding=(1, 2), bias=False), (2, 8, 10, 12)),
    (nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular"), (1, 4, 7, 7)),
    (nn.Conv1d(6, 9, 5, stride=2, padding=2), (3, 6, 20)),
])
def test_full_rank_conv_pair_matches_the_original(conv, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    full = min(conv.out_channels, conv.weight[0].numel())
    pair = factorise_layer(conv, full)
    assert isinstance(pair, nn.Sequential) and len(pair) == 2
    assert pair[0].stride == conv.stride and pair[0].dilation == conv.dilation
    assert pair[1].kernel_size == (1,) * len(conv.kernel_size)
    assert (pair[1].bias is None) == (conv.bias is None)
    assert (pair(x) - conv(x)).abs().max().item() <= 1e-4


def test_full_rank_linear_pair_matches_and_truncation_is_optimal():
    torch.manual_seed(0)
    lin = nn.Linear(12, 7)
    x = torch.randn(5, 12)
    assert (factorise_layer(lin, 7)(x) - lin(x)).abs().max().item() <= 1e-4
    r3 = factorise_layer(lin, 3)
    approx = r3[1].weight @ r3[0].weight
    s = torch.linalg.svdvals(lin.weight.detach())
    err = torch.linalg.matrix_norm(approx - lin.weight.detach()).item()
    assert err == pytest.approx(s[3:].pow(2).sum().sqrt().item(), rel=1e-4)  # Eckart–Young


def test_gram_route_reproduces_lapack_svd():
    torch.manual_seed(0)
    m = torch.randn(300, 700, dtype=torch.float64) * torch.logspace(0, -3, 700)
    u, s, vh = thin_svd(m)
    assert m.numel() > 1 << 17  # the Gram route
    assert torch.allclose(s, torch.linalg.svdvals(m), rtol=1e-8, atol=1e-10)
    assert ((u * s) @ vh - m).abs().max().item() < 1e-10


@pytest.mark.parametrize("arch, kwargs", [("resnet20", {}), ("vgg11_bn", {"width": 0.5})])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_achieved_sparsity_within_one_point(arch, kwargs, sparsity):
    torch.manual_seed(0)
    model = build_model(arch, **kwargs)
    before = count_params(model)
    small = svd(model, sparsity=sparsity)
    after = count_params(small)
    achieved = 1 - after / before
    assert abs(achieved - sparsity) <= 0.01
    assert small.tuneless_report["achieved_sparsity"] == pytest.approx(achieved)
    assert small.tuneless_report["params_after"] == after
    x = torch.randn(2, 3, 32, 32)
    assert small.eval()(x).shape == (2, 10)


def test_input_model_untouched_and_keys_predictable():
    torch.manual_seed(0)
    model = build_model("resnet20")
    ref = copy.deepcopy(model)
    small = svd(model, sparsity=0.5, example_inputs=torch.randn(1, 3, 32, 32))
    assert _same_weights(model, ref)  # same keys (no layer replaced) and same values
    assert [type(m) for m in model.modules()] == [type(m) for m in ref.modules()]
    replaced = [r["layer"] for r in small.tuneless_report["layers"] if r["rank"] is not None]
    assert replaced
    keys = small.state_dict().keys()
    for name in replaced:
        assert f"{name}.0.weight" in keys and f"{name}.1.weight" in keys
        assert f"{name}.weight" not in keys


def test_break_even_respected_and_parameters_really_drop():
    torch.manual_seed(0)
    model = build_model("resnet20")
    small = svd(model, rank_ratio=0.25)
    report = small.tuneless_report
    for row in report["layers"]:
        o, rest = row["shape"][0], int(torch.tensor(row["shape"][1:]).prod())
        if row["rank"] is None:
            assert row["params_after"] == row["params_before"]
            continue
        assert row["rank"] < o * rest / (o + rest)  # strictly below break-even
        assert row["params_after"] == row["rank"] * (o + rest) < row["params_before"]
    assert count_params(small) < count_params(model)
    assert report["params_after"] == count_params(small)
    # rank_ratio=1 keeps everything dense: no layer is worth factorising at full rank
    dense = svd(model, rank_ratio=1.0)
    assert dense.tuneless_report["layers_replaced"] == 0 and _same_weights(dense, model)


def test_energy_rank_keeps_requested_energy_and_reconstructs_low_rank_layers():
    torch.manual_seed(0)
    lin = nn.Linear(64, 64, bias=False)
    with torch.no_grad():  # rank-4 weight: energy 1.0 needs rank 4
        lin.weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64))
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(64, 10))
    small = svd(model, energy=0.999999)
    row = small.tuneless_report["layers"][0]
    assert row["rank"] == 4 and row["energy_kept"] >= 0.999999
    x = torch.randn(8, 64)
    assert (small(x) - model(x)).abs().max().item() <= 1e-4
    assert count_params(small) == count_params(model) - 64 * 64 + 4 * 128


def test_budget_prefers_low_energy_layers():
    torch.manual_seed(0)
    low = nn.Linear(128, 128, bias=False)
    with torch.no_grad():
        low.weight.copy_(torch.randn(128, 8) @ torch.randn(8, 128) + 1e-3 * torch.randn(128, 128))
    model = nn.Sequential(low, nn.Linear(128, 128, bias=False))
    small = svd(model, sparsity=0.4)
    rows = {r["layer"]: r for r in small.tuneless_report["layers"]}
    assert rows["0"]["rank"] is not None and rows["0"]["energy_kept"] > 0.999
    assert rows["1"]["rank"] is None or rows["1"]["rank"] > rows["0"]["rank"]


def test_grouped_conv_stays_dense_with_reason():
    model = nn.Sequential(nn.Conv2d(16, 16, 3, groups=4), nn.Conv2d(16, 64, 3))
    small = svd(model, energy=0.5)
    assert small.tuneless_report["kept_dense"] == {"0": "grouped conv (groups=4)"}
    assert isinstance(small[0], nn.Conv2d) and isinstance(small[1], nn.Sequential)


def test_unreachable_sparsity_names_the_maximum():
    # 8×8 (72 params with bias) can save 64 − 1·16 = 48; 2×8 (18) saves 16 − 10 = 6: 60% of 90
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    assert svd(model, sparsity=0.6).tuneless_report["achieved_sparsity"] == pytest.approx(0.6)
    with pytest.raises(TunelessError, match=r"cannot remove 70\.0%.*at most 60\.0% can go"):
        svd(model, sparsity=0.7)
    with pytest.raises(TunelessError, match=r"at most 35\.6% can go"):
        svd(model, sparsity=0.6, min_rank=2)  # 8×8 at rank 2 saves 32, 2×8 stays dense: 32 of 90


def test_registered_under_svd():
    assert get_method("svd") is svd


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of"),
    ({"sparsity": 0.5, "energy": 0.9}, "exactly one of"),
    ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": -0.1}, "sparsity must be in"),
    ({"sparsity": "half"}, "sparsity must be a number"),
    ({"energy": 0.0}, r"energy must be in \(0, 1\]"),
    ({"rank_ratio": 1.5}, "rank_ratio must be in"),
    ({"sparsity": 0.5, "min_rank": 0}, "min_rank must be"),
    ({"sparsity": 0.5, "allocation": "random"}, "allocation must be"),
    ({"sparsity": 0.5, "exclude": ["nope"]}, "exclude names modules"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(TunelessError, match=message):
        svd(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), **kwargs)


def test_model_without_factorisable_layers():
    with pytest.raises(UnsupportedModelError, match="no conv or linear"):
        svd(nn.Sequential(nn.ReLU()), sparsity=0.5)
    with pytest.raises(TunelessError, match="needs a torch.nn.Module"):
        svd("model.pt", sparsity=0.5)


def test_example_inputs_that_do_not_fit_are_reported():
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 2))
    with pytest.raises(TunelessError, match="does not run on example_inputs"):
        svd(model, energy=0.5, example_inputs=torch.randn(1, 7))


def test_svd_model_round_trips_through_save_and_load(tmp_path):
    from tuneless import load, save
    from tuneless.modelio import build_arch

    torch.manual_seed(0)
    model = build_arch("resnet20").eval()
    small = svd(model, sparsity=0.5)
    info = save(small, tmp_path / "small.pt")
    assert info["mode"] == "reference"  # no pickled code: rebuilt from specs
    assert any(name.endswith("conv2") or name.endswith("conv1") for name in info["changed_modules"])
    back = load(tmp_path / "small.pt").eval()
    assert _same_weights(back, small)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), small.eval()(x))
    assert count_params(back) == small.tuneless_report["params_after"]


def test_bn_weighting_spends_rank_where_the_norm_passes_error_on():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)  # break-even rank 8
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 1.0, 3.0] + [0.0] * 12))
        bn.running_var.uniform_(0.5, 2.0)
    model = nn.Sequential(conv, bn, nn.ReLU(), nn.Conv2d(16, 3, 1)).eval()
    x = torch.randn(4, 16, 5, 5)
    weighted = svd(model, rank_ratio=0.25, weighting="bn", exclude=["3"]).eval()
    plain = svd(model, rank_ratio=0.25, exclude=["3"]).eval()
    assert weighted.tuneless_report["bn_weighted_layers"] == 1
    assert isinstance(weighted[0], nn.Sequential) and weighted[0][0].out_channels == 4
    assert (weighted(x) - model(x)).abs().max().item() <= 1e-4  # γ = 0 channels cost nothing
    assert (plain(x) - model(x)).abs().max().item() > 1e-2


def test_bn_weighting_full_rank_identity_on_resnet20():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 2.0)
                m.running_var.uniform_(0.1, 3.0)
    conv = model.layer2[1].conv1
    bn_scale = (model.layer2[1].bn1.running_var + 1e-5).rsqrt() * model.layer2[1].bn1.weight
    spec_pair = svd(model, rank_ratio=1.0, weighting="bn")
    assert spec_pair.tuneless_report["bn_weighted_layers"] == 21  # every conv of ResNet-20
    from tuneless.methods.svd import _spectrum, build_pair

    pair = build_pair(_spectrum("c", conv, bn_scale.detach().double()), 32)
    x = torch.randn(2, 32, 8, 8)
    assert (pair(x) - conv(x)).abs().max().item() <= 1e-4
