"""Property-based tests: every method on random small networks keeps the basic contracts.

Networks are drawn by hypothesis as plain JSON specs (conv / BatchNorm / depthwise conv /
residual add / concat / pooling / flatten→linear heads, random widths, seeded weights) and
built by `build_net`. For save/load they need an architecture reference without pickle:
  - networks of torch.nn modules only are an `nn.Sequential` built by
    `build_arch("torch.nn:Sequential")`; `tuneless.save` then describes every layer as a
    changed module (type + constructor arguments), all allowlisted torch.nn types;
  - residual / concat networks need this file's `Residual` / `Concat` classes, which a
    saved file may not name by import path (tuneless.trust): `build_net` is registered
    with `tuneless.register_architecture` and the file names that.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tuneless
from tuneless.errors import TunelessError
from tuneless.modelio import build_arch

torch.set_num_threads(1)

SIZE = 8  # input images are 2×3×SIZE×SIZE
METHODS = ("fold-none", "fold-ar", "prune-l1", "svd", "magnitude")
STRUCTURED = ("fold-none", "fold-ar", "prune-l1")  # remove whole channels
# Documented refusals: the request is beyond what the method can remove from this network,
# or every channel group is fixed (e.g. a depthwise conv with channel multiplier 2).
REFUSALS = ("out of reach", "cannot remove", "conv/linear weights hold only",
            "every channel group is fixed")
ARCH = "tuneless-tests/property-net"

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- networks


class Residual(nn.Module):
    """x + body(x): the body's last producer shares its channels with the input's."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Concat(nn.Module):
    """cat([a(x), b(x)], 1): two channel groups side by side on one axis."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


def _conv(cin: int, cout: int, k: int = 3, bn: bool = True, bias: bool = False,
          groups: int = 1, relu: bool = True, stride: int = 1) -> list[nn.Module]:
    mods: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups,
                                       bias=bias)]
    if bn:
        mods.append(nn.BatchNorm2d(cout))
    if relu:
        mods.append(nn.ReLU())
    return mods


@torch.no_grad()
def _randomise(model: nn.Module, seed: int, quirk: str = "none") -> None:
    """Trained-looking weights: scaled Gaussian layers, BN with non-trivial statistics.

    quirk "dead" zeroes some output channels (rows, bias, γ, running stats ≈ 0) as in
    trained ReLU nets; "dupes" makes channel 1 an exact copy of channel 0 (ties for
    k-means, top-k and SVD).
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        elif isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.copy_(0.1 * torch.randn(n, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        else:
            continue
        tensors = [t for t in (m.weight, m.bias, getattr(m, "running_mean", None),
                               getattr(m, "running_var", None)) if t is not None]
        if quirk == "dead":
            dead = torch.rand(tensors[0].shape[0], generator=g) < 0.3
            for t in tensors:
                t[dead] = 1e-8 if t is getattr(m, "running_var", None) else 0.0
        elif quirk == "dupes" and tensors[0].shape[0] >= 2:
            for t in tensors:
                t[1] = t[0]


def build_net(layers: list[dict], seed: int = 0, quirk: str = "none") -> nn.Sequential:
    """The network a spec describes (also the registered architecture factory)."""
    mods: list[nn.Module] = []
    c, hw = 3, SIZE
    for spec in layers:
        op = spec["op"]
        if op == "conv":
            mods += _conv(c, spec["out"], spec["k"], spec["bn"], spec["bias"],
                          stride=spec["stride"])
            c, hw = spec["out"], (hw - 1) // spec["stride"] + 1
        elif op == "dw":
            mods += _conv(c, c * spec["mult"], 3, spec["bn"], spec["bias"], groups=c)
            c *= spec["mult"]
        elif op == "res":
            body = _conv(c, spec["hidden"], 3, spec["bn"]) + _conv(spec["hidden"], c, 3,
                                                                   spec["bn"], relu=False)
            mods += [Residual(nn.Sequential(*body)), nn.ReLU()]
        elif op == "cat":
            a = nn.Sequential(*_conv(c, spec["a"], 1, spec["bn"]))
            b = nn.Sequential(*_conv(c, spec["b"], 3, spec["bn"]))
            mods.append(Concat(a, b))
            c = spec["a"] + spec["b"]
            if spec["bn_after"]:
                mods.append(nn.BatchNorm2d(c))
        elif op == "pool":
            mods.append(nn.MaxPool2d(2))
            hw //= 2
        elif op == "gap":
            mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            hw = 1
        elif op == "flatten":
            mods.append(nn.Flatten())
            c, hw = c * hw * hw, 1
        elif op == "linear":
            mods.append(nn.Linear(c, spec["out"], bias=spec["bias"]))
            if spec["relu"]:
                mods.append(nn.ReLU())
            c = spec["out"]
        else:
            raise ValueError(f"unknown op {op!r}")
    model = nn.Sequential(*mods)
    _randomise(model, seed, quirk)
    return model.eval()


tuneless.register_architecture(ARCH, build_net)


def is_custom(spec: dict) -> bool:
    return any(layer["op"] in ("res", "cat") for layer in spec["layers"])


def make_model(spec: dict) -> nn.Module:
    """The network of `spec`, carrying an architecture reference whenever one exists."""
    if is_custom(spec):
        return build_arch(ARCH, spec)
    model = build_arch("torch.nn:Sequential")  # every layer is then a described module
    model.extend(build_net(**spec))
    return model.eval()


widths = st.integers(2, 12)
RATIOS = st.floats(0.0, 0.8)  # sparsity or channel_ratio


@st.composite
def net_specs(draw, need_bn: bool = False, custom: str = "maybe") -> dict:
    """A JSON-plain spec: stem conv, up to 3 blocks, a pooled or flattened linear head.

    custom: "never" / "maybe" / "always" include a residual add or concat block.
    """
    kinds = ["conv", "dw", "pool"] + (["res", "cat"] if custom == "maybe" else [])
    ops = draw(st.lists(st.sampled_from(kinds), max_size=3))
    if custom == "always":
        ops.insert(draw(st.integers(0, len(ops))), draw(st.sampled_from(["res", "cat"])))
    layers = [{"op": "conv", "out": draw(widths), "k": 3, "stride": 1,
               "bn": need_bn or draw(st.booleans()), "bias": draw(st.booleans())}]
    c, hw = layers[0]["out"], SIZE
    for op in ops:
        bn, bias = draw(st.booleans()), draw(st.booleans())
        if op == "conv":
            stride = draw(st.sampled_from([1, 2])) if hw > 2 else 1
            c = draw(widths)
            layers.append({"op": op, "out": c, "k": draw(st.sampled_from([1, 3])),
                           "stride": stride, "bn": bn, "bias": bias})
            hw = (hw - 1) // stride + 1
        elif op == "dw":
            mult = draw(st.sampled_from([1, 2])) if c <= 6 else 1
            layers.append({"op": op, "mult": mult, "bn": bn, "bias": bias})
            c *= mult
        elif op == "res":
            layers.append({"op": op, "hidden": draw(widths), "bn": bn})
        elif op == "cat":
            a, b = draw(st.integers(1, 6)), draw(st.integers(1, 6))
            layers.append({"op": op, "a": a, "b": b, "bn": bn, "bn_after": draw(st.booleans())})
            c = a + b
        elif hw > 2:
            layers.append({"op": "pool"})
            hw //= 2
    layers.append({"op": draw(st.sampled_from(["gap", "flatten"]))})
    if draw(st.booleans()):
        layers.append({"op": "linear", "out": draw(widths), "bias": draw(st.booleans()),
                       "relu": True})
    layers.append({"op": "linear", "out": draw(st.integers(2, 5)), "bias": True, "relu": False})
    return {"layers": layers, "seed": draw(st.integers(0, 2**16)),
            "quirk": draw(st.sampled_from(["none", "dead", "dupes"]))}


def draw_case(data, method: str, ratio=RATIOS, custom: str = "maybe") -> tuple:
    """(model, input, knob, value). The JSON spec and the request are separate labelled
    draws, so a falsifying example prints a spec that `make_model` rebuilds as is."""
    spec = data.draw(net_specs(need_bn=method == "fold-ar", custom=custom), label="spec")
    structured = method in STRUCTURED
    knob = data.draw(st.sampled_from(["sparsity", "channel_ratio"] if structured else
                                     ["sparsity"]), label="knob")
    value = data.draw(ratio, label=knob)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(spec["seed"]))
    return make_model(spec), x, knob, value


def compress(method: str, model: nn.Module, x: torch.Tensor, knob: str, value: float,
             seed: int = 0) -> nn.Module | None:
    """The compressed model, or None if the method refuses the request as documented."""
    kw = {knob: value}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "achieved sparsity … the closest the counts allow"
            if method.startswith("fold-"):
                return tuneless.fold(model, repair=method[5:], example_inputs=x, seed=seed, **kw)
            if method == "prune-l1":
                return tuneless.prune(model, criterion="l1", example_inputs=x, seed=seed, **kw)
            if method == "svd":
                return tuneless.svd(model, example_inputs=x, **kw)
            return tuneless.magnitude_prune(model, **kw)
    except TunelessError as exc:
        if any(r in str(exc) for r in REFUSALS):
            return None
        raise


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exactly equal values, shape and dtype; NaN equals NaN here, so a NaN is reported by the
    finiteness property rather than as a reproducibility or save/load failure."""
    return a.shape == b.shape and a.dtype == b.dtype and (
        torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, 0, 0, True)))


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)


@torch.no_grad()
def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


def round_trip(small: nn.Module, x: torch.Tensor) -> None:
    """Save without pickle, load with weights_only, and compare weights and outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "small.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the pickle fallback only warns: make it fail
            info = tuneless.save(small, path)
        assert info["mode"] == "reference"
        back = tuneless.load(path)  # allow_pickle=False
    assert same_state(state(back), state(small))
    assert identical(run(back, x), run(small, x))


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(data=st.data())
def test_result_is_finite_keeps_shape_and_never_grows(method, data):
    """A compressed network must still run, give finite outputs of the same shape, and not
    hold more parameters than the original (magnitude pruning keeps the count)."""
    model, x, knob, value = draw_case(data, method)
    small = compress(method, model, x, knob, value)
    assume(small is not None)
    y, y_small = run(model, x), run(small, x)
    assert y_small.shape == y.shape
    assert torch.isfinite(y_small).all()
    assert n_params(small) <= n_params(model)


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(data=st.data())
def test_ratio_zero_is_identity(method, data):
    """Removing nothing must give back the same function: bit-equal outputs for the
    structured methods (a full-width rewrite only copies), 1e-5 relative for the others."""
    model, x, knob, _ = draw_case(data, method, ratio=st.just(0.0))
    small = compress(method, model, x, knob, 0.0)
    assume(small is not None)
    assert n_params(small) == n_params(model)
    y, y_small = run(model, x), run(small, x)
    if method in STRUCTURED:
        assert torch.equal(y_small, y)
    else:
        assert (y_small - y).abs().max() <= 1e-5 * y.abs().max()


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(data=st.data())
def test_save_load_round_trip_is_exact(method, data):
    """Networks of torch.nn modules must save by reference (no pickle) and load back to
    the same weights and bit-equal outputs."""
    model, x, knob, value = draw_case(data, method, custom="never")
    small = compress(method, model, x, knob, value)
    assume(small is not None)
    round_trip(small, x)


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(data=st.data())
def test_save_load_round_trip_residual_concat(method, data):
    """The same for residual / concat networks, whose user classes a saved file reaches
    through the registered architecture name."""
    model, x, knob, value = draw_case(data, method, custom="always")
    small = compress(method, model, x, knob, value)
    assume(small is not None)
    assert small.tuneless_arch["ref"] == ARCH
    round_trip(small, x)


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(data=st.data(), seed=st.integers(0, 3))
def test_same_seed_gives_identical_weights(method, data, seed):
    """Compression is reproducible: the same model, request and seed give bit-identical
    weights (k-means restarts included)."""
    model, x, knob, value = draw_case(data, method)
    first = compress(method, model, x, knob, value, seed=seed)
    assume(first is not None)
    second = compress(method, copy.deepcopy(model), x.clone(), knob, value, seed=seed)
    assert second is not None
    assert same_state(state(first), state(second))


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(data=st.data(), train_mode=st.booleans())
def test_input_model_is_untouched(method, data, train_mode):
    """Every method works on a copy: the caller's weights, BN statistics and train/eval
    flags stay as they were (a forward in train mode would move the running stats)."""
    model, x, knob, value = draw_case(data, method)
    model.train(train_mode)
    before = state(model)
    modes = [m.training for m in model.modules()]
    compress(method, model, x, knob, value)
    assert same_state(state(model), before)
    assert [m.training for m in model.modules()] == modes
