"""Least-squares layer refit: exact where the small model can be exact, better than BN
re-estimation and than no repair on held-out inputs, after folding and after pruning."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tuneless
from tuneless.errors import TunelessError
from tuneless.layer_refit import channel_maps_from_indices, channel_maps_from_labels
from tuneless.methods.fold import fold
from tuneless.methods.prune import prune
from tuneless.zoo import build_model

from .methods.fold_models import X32, DuplicatedCNN, _randomise_bn

torch.set_num_threads(1)


def _images(n: int, size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _error(model: nn.Module, small: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.mse_loss(small(x), model(x)) / model(x).pow(2).mean())


def test_maps_average_clusters_and_select_kept_channels():
    m = channel_maps_from_labels({"3": [0, 1, 0, 1, 1]})[3]
    assert torch.allclose(m, torch.tensor([[0.5, 0, 0.5, 0, 0], [0, 1 / 3, 0, 1 / 3, 1 / 3]]))
    s = channel_maps_from_indices({"2": [4, 1]}, {2: 5})[2]
    assert s.tolist() == [[0, 1, 0, 0, 0], [0, 0, 0, 0, 1]]  # reduce keeps channels sorted


class _HalfDead(nn.Module):
    """Two groups of 8 channels, 4 of each dead (zero rows, γ = β = 0): pruning them is
    exact. The live channels' norms rank them out of index order (6, 7, 1, 3)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)
        scale = torch.tensor([0, 2, 0, 1, 0, 0, 4, 3.0])
        with torch.no_grad():
            for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
                w = torch.randn(conv.weight.shape, generator=g).sign() * 0.1
                conv.weight.copy_(w * scale.view(-1, 1, 1, 1))
                bn.weight.copy_((0.5 + torch.rand(8, generator=g)) * (scale > 0))
                bn.bias.copy_(torch.randn(8, generator=g) * (scale > 0))
                bn.running_var.copy_(0.5 + torch.rand(8, generator=g))
        self.eval()

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def test_refit_keeps_an_exact_pruning_exact_whatever_order_prune_ranks_channels():
    model, x = _HalfDead(), _images(2)
    pruned = prune(model, channel_ratio=0.5, criterion="l1", example_inputs=x)
    ranked = pruned.tuneless_report["channels"]["1"]
    assert ranked != sorted(ranked)
    held = _images(16, seed=1)
    assert _error(model, pruned, held) < 1e-10  # the dead channels went
    fixed = tuneless.refit(model, pruned, _images(64), example_inputs=x, ridge=0.0)
    assert _error(model, fixed, held) < 1e-8


def test_refit_keeps_an_exact_fold_exact():
    model = DuplicatedCNN()
    small = fold(model, channel_ratio=0.5, repair="refit", example_inputs=X32,
                 data=_images(48, 32), ridge=0.0)
    assert small.conv1.out_channels == 4 and small.refit_report["skipped"] == []
    assert (small(X32) - model(X32)).abs().max() <= 1e-4 * model(X32).abs().max()


def test_refit_beats_bn_reestimation_and_no_repair_on_held_out_inputs():
    model = _randomise_bn(build_model("resnet20"))
    calib, held = _images(96), _images(32, seed=1)
    x = _images(2)
    errors = {repair: _error(model, fold(model, sparsity=0.5, repair=repair, example_inputs=x,
                                         data=calib if repair in ("data", "refit") else None),
                             held)
              for repair in ("none", "data", "refit")}
    assert errors["refit"] < 0.5 * min(errors["none"], errors["data"]), errors


def test_public_refit_after_structured_pruning():
    model = _randomise_bn(build_model("resnet20"))
    x = _images(2)
    pruned = prune(model, sparsity=0.5, criterion="l1", example_inputs=x)
    fixed = tuneless.refit(model, pruned, _images(96), example_inputs=x)
    assert fixed is not pruned and fixed.refit_report["skipped"] == []
    held = _images(32, seed=1)
    assert _error(model, fixed, held) < 0.5 * _error(model, pruned, held)


class _Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.pw, self.bn3 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.dw(x)))
        x = F.relu(self.bn3(self.pw(x)))
        return self.fc(x.mean((2, 3)))


def test_depthwise_conv_is_left_alone_and_named():
    model = _randomise_bn(_Depthwise())
    small = fold(model, channel_ratio=0.5, repair="refit", example_inputs=_images(2),
                 data=_images(32))
    report = small.refit_report
    assert any(s.startswith("dw:") for s in report["skipped"]) and "pw" in report["refitted"]
    assert torch.isfinite(small(_images(4))).all()


def test_refit_works_without_batchnorm():
    model = build_model("lenet5").eval()
    calib, held = _images(64, 28, 1), _images(32, 28, 1, seed=1)
    naive = fold(model, sparsity=0.5, repair="none", example_inputs=calib[:2])
    fixed = fold(model, sparsity=0.5, repair="refit", example_inputs=calib[:2], data=calib)
    assert _error(model, fixed, held) < _error(model, naive, held)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "needs data"),
    ({"data": X32, "ridge": -1.0}, "ridge"),
    ({"data": X32, "refit_images": 1}, "refit_images"),
])
def test_bad_refit_arguments_raise(kwargs, message):
    with pytest.raises(TunelessError, match=message):
        fold(DuplicatedCNN(), channel_ratio=0.5, repair="refit", example_inputs=X32, **kwargs)


def test_public_refit_needs_a_tuneless_compressed_model():
    model = DuplicatedCNN()
    with pytest.raises(TunelessError, match="compressed by tuneless"):
        tuneless.refit(model, DuplicatedCNN(), X32, example_inputs=X32)


def _counted_refit_setup(images: int):
    """A ResNet-20 pruned by half, calibration images, and a list that grows by one with
    every forward pass of the original (how many passes a refit costs)."""
    model = _randomise_bn(build_model("resnet20"))
    x = _images(2)
    pruned = prune(model, sparsity=0.5, criterion="l1", example_inputs=x)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return model, x, pruned, _images(images), calls


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    assert a.refit_report["refitted"] == b.refit_report["refitted"]
    for (k, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(u, v, rtol=1e-4, atol=1e-6), k


def test_cached_targets_give_the_same_refit_as_per_layer_capture():
    """One forward of the original per batch (cached targets) or one per layer (cache_bytes=0):
    the same least-squares problems, so the same weights."""
    model, x, pruned, calib, calls = _counted_refit_setup(80)
    fast = tuneless.refit(model, pruned, calib, example_inputs=x, batch_size=32)
    fast_calls = len(calls)
    slow = tuneless.refit(model, pruned, calib, example_inputs=x, batch_size=32, cache_bytes=0)
    assert fast_calls <= 3 + 3  # graph trace, layer order, and one pass per batch (3 batches)
    assert len(calls) - fast_calls > 10 * fast_calls  # per-layer capture: a pass per layer
    _assert_same_weights(fast, slow)


def test_targets_over_the_cache_budget_are_refitted_in_runs_with_the_same_result():
    """A budget that holds a third of the targets: the layers are refitted in several runs
    (a pass of the original per batch and run), not one capture per layer, and the weights
    are those of the single run."""
    model, x, pruned, calib, calls = _counted_refit_setup(64)
    whole = tuneless.refit(model, pruned, calib, example_inputs=x, batch_size=32)
    one_run = len(calls)
    outputs = {}
    hooks = [pruned.get_submodule(n).register_forward_hook(
        lambda _m, _a, out, n=n: outputs.setdefault(n, out[0].numel()) and None)
        for n in whole.refit_report["refitted"]]
    pruned(x)
    for h in hooks:
        h.remove()
    total = sum(outputs.values()) * 4 * 64  # float32 targets of 64 images
    calls.clear()
    runs = tuneless.refit(model, pruned, calib, example_inputs=x, batch_size=32,
                          cache_bytes=total // 3)
    assert one_run + 2 * 2 <= len(calls) <= one_run + 6 * 2  # 3 to 7 runs of 2 batches
    _assert_same_weights(whole, runs)


def testchannel_map_of_a_producer_feeding_several_groups_is_block_diagonal():
    """A stream producer behind a zero-padded shortcut writes [pad | carried | pad] spans,
    each its own group: the map follows reduce's layout, identity where nothing changed."""
    from tuneless.layer_refit import channel_map

    layer = nn.Conv2d(3, 2 + 1 + 2, 1)  # small: 2 (of 3) + 1 untouched + 2 (of 2) rows
    outputs = {"c": [(7, 4, 2, 1), (5, 0, 3, 1)]}  # (group, offset, n, block), unsorted
    m5 = channel_maps_from_labels({"5": [0, 1, 0]})[5]
    got = channel_map("c", layer, outputs, {5: m5})
    want = torch.block_diag(m5, torch.eye(1), torch.eye(2))
    assert torch.equal(got, want)
    assert channel_map("c", nn.Conv2d(3, 4, 1), outputs, {5: m5}) is None  # widths disagree


@pytest.mark.parametrize("pad", ["after", "both-sides"])
def test_refit_reaches_every_layer_of_an_option_a_resnet(pad):
    """Zero-padding shortcuts split the streams into several groups per producer; the refit
    must still re-solve those producers (it used to skip them) and beat no repair."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "breadth"))
    from option_a_resnet import resnet20 as resnet20_option_a

    model = _randomise_bn(build_model("resnet20a") if pad == "after" else resnet20_option_a())
    x = _images(2, 32)
    calib, held = _images(96, 32), _images(32, 32, seed=1)
    for small in (fold(model, sparsity=0.5, repair="refit", example_inputs=x, data=calib),
                  tuneless.refit(model, prune(model, sparsity=0.5, criterion="l1",
                                              example_inputs=x), calib, example_inputs=x)):
        assert small.refit_report["skipped"] == []
        assert "layer2.0.conv2" in small.refit_report["refitted"]
    none = fold(model, sparsity=0.5, repair="none", example_inputs=x)
    assert _error(model, small, held) < 0.5 * _error(model, none, held)


def test_a_merged_channels_target_is_the_mean_after_the_clamp():
    from tuneless.layer_refit import _Target

    z = torch.tensor([[2.0, -1.0, 5.0], [-3.0, -1.0, 1.0], [8.0, 6.0, -2.0]])  # rows: samples
    m = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])  # channels 0+1 merged, 2 kept
    for lo, hi in ((0.0, float("inf")), (0.0, 6.0)):
        t = _Target(m, (lo, hi))(z)
        assert torch.equal(t.clamp(lo, hi), z.clamp(lo, hi) @ m.T), (lo, hi)
        assert torch.equal(t[:, 1], z[:, 2])  # a kept channel's target is itself
    assert torch.equal(_Target(m)(z), z @ m.T)  # no clamp: the plain mean
    assert _Target(m, (0.0, float("inf")))(z)[0, 0] == 1.0  # relu(mean) would give 0.5


class _Pair(nn.Module):
    """conv → BN → act (→ pool) → conv: the group between the convs passes `act`."""

    def __init__(self, act, pool: bool = False) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.act, self.pool = act, nn.MaxPool2d(2) if pool else nn.Identity()
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.pool(self.act(self.bn(self.conv1(x)))))


@pytest.mark.parametrize("act, pool, clamp", [
    (nn.ReLU(), False, (0.0, float("inf"))), (nn.ReLU(inplace=True), True, (0.0, float("inf"))),
    (nn.ReLU6(), False, (0.0, 6.0)), (nn.GELU(), False, None), (nn.Identity(), False, None),
    (nn.LeakyReLU(0.1), True, None)])
def test_the_clamp_after_a_layer_is_measured_through_pooling(act, pool, clamp):
    from tuneless.layer_refit import _clamp_after

    model = _Pair(act, pool).eval()
    with torch.no_grad():
        model.conv1.weight.mul_(20)  # outputs beyond 6 as well as below 0
    assert _clamp_after(model, "bn", ["conv2"], _images(4)) == clamp


def test_refit_targets_merged_channels_after_their_relu():
    model = _randomise_bn(build_model("resnet20"))
    x = _images(2)
    small = fold(model, sparsity=0.5, repair="refit", example_inputs=x, data=_images(128, size=32),
                 allocation="uniform")  # every block's group merged (measured widths may not)
    clamped = small.refit_report["clamped"]  # stage 3: 128 × 8 × 8 rows ≥ 10 × 577 unknowns
    # every block's conv1 → bn1 → relu group; the streams pass an addition first
    assert {n for n in clamped if n.endswith("conv1") and "layer" in n} == {
        f"layer{i}.{j}.conv1" for i in (1, 2, 3) for j in range(3)}
    assert not any(n.endswith("conv2") for n in clamped), clamped
    pruned = prune(model, sparsity=0.5, criterion="l1", example_inputs=x)
    assert tuneless.refit(model, pruned, _images(64), example_inputs=x).refit_report[
        "clamped"] == []  # kept channels: nothing to average


def test_a_layer_with_few_rows_per_unknown_keeps_the_plain_mean_target():
    """A fully connected layer on as many images as it has inputs would fit the clamped
    target to the sample: only the conv layers, with rows to spare, are clamp-targeted."""
    from tuneless.layer_refit import MIN_ROWS_PER_UNKNOWN

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 16 * 16, 16), nn.ReLU(),
                          nn.Linear(16, 10))
    model = _randomise_bn(model)
    x, data = _images(2), _images(64)
    assert 64 < MIN_ROWS_PER_UNKNOWN * (8 * 16 * 16 + 1)  # the hidden linear: too few rows
    small = fold(model, sparsity=0.5, repair="refit", example_inputs=x, data=data, seed=0)
    assert small.refit_report["clamped"] == ["0"]


def test_self_repair_is_the_refit_on_the_models_own_deepinversion_images():
    from tuneless.deepinversion import synthesize

    model = _randomise_bn(build_model("resnet20"))
    x = _images(2)
    inv = {"num_images": 8, "batch_size": 8, "steps": 2}
    # the same widths for both: allocation="auto" measures the refit's, not self's
    small = fold(model, sparsity=0.5, repair="self", example_inputs=x, inversion=inv, seed=3,
                 allocation="uniform")
    same = fold(model, sparsity=0.5, repair="refit", example_inputs=x, seed=3,
                data=synthesize(model, x, seed=3, **inv), allocation="uniform")
    held = _images(16, seed=2)
    assert torch.equal(small(held), same(held)) and small.refit_report["images"] == 8
    none = fold(model, sparsity=0.5, repair="none", example_inputs=x, seed=3)
    assert _error(model, small, held) < _error(model, none, held)


def test_refit_of_a_model_compressed_from_another_original_is_named():
    x = torch.randn(1, 3, 32, 32)
    wide, narrow = build_model("resnet20").eval(), build_model("resnet20", width=0.5).eval()
    for small in (prune(wide, sparsity=0.3, example_inputs=x),
                  fold(wide, sparsity=0.3, example_inputs=x, allocation="uniform")):
        with pytest.raises(TunelessError, match="was not made from this original: its report "
                                                "names channel group"):
            tuneless.refit(narrow, small, _images(8, 32), example_inputs=x)


@pytest.mark.parametrize("side", [4, 12])  # 16 positions < 27 inputs: row-major; 144: per image
@pytest.mark.parametrize("intercept", [False, True])
def test_normal_equations_equal_those_of_the_row_major_design_with_a_ones_column(
        side, intercept, monkeypatch):
    """XᵀX and XᵀY from conv patches as unfold lays them out (and from sums for the ones
    column) equal the textbook ones of the row-major design matrix."""
    from tuneless import layer_refit

    monkeypatch.setattr(layer_refit, "_PRODUCT_BYTES", 4 * 27 * 27 * 3)  # 3 images a product
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(7, 3, side, side, dtype=torch.float64).float()
    cols = layer_refit._rows(conv, x)
    tgt = torch.randn(7 * side * side, 4)
    rows = cols.transpose(1, 2).reshape(-1, 27).double()
    if intercept:
        rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], 1)
    gram, cross = layer_refit._normal_equations(cols, tgt, intercept)
    assert torch.allclose(gram, rows.T @ rows, rtol=1e-5, atol=1e-4)
    assert torch.allclose(cross, rows.T @ tgt.double(), rtol=1e-5, atol=1e-4)
    lin = layer_refit._rows(torch.nn.Linear(27, 4), rows[:, :27].float())
    gram, cross = layer_refit._normal_equations(lin, tgt, intercept)
    assert torch.allclose(gram, rows.T @ rows, rtol=1e-5, atol=1e-4)
