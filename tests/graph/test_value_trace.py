"""Tracing through Python decisions on tensor values (tuneless.graph.value_trace)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import tuneless
from tuneless.errors import UnsupportedModelError
from tuneless.graph.trace import trace


class Checks(nn.Module):
    """Shape checks, int(size), unpacking, len (of a tensor and of its shape), numpy on a
    shape, torch.finfo of a dtype and a defaulted argument, as Hugging Face models write
    them (Perceiver: `len(inputs.shape)`, `np.prod(index_dims)`, `torch.finfo(dtype)`);
    plain torch.fx stops at the first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x, labels=None, scale: float = 1.0):
        if x.shape[1] != 3:
            raise ValueError("three channels expected")
        n, _, h, w = x.shape
        y = torch.relu(self.conv1(x))
        if len(y.shape) != 4 or np.prod(y.shape[2:]) != h * w:
            raise ValueError("a 2-D map expected")
        y = y.clamp(min=torch.finfo(y.dtype).min)
        if int(y.size(-1)) > 1 and len(y) == n:
            y = torch.relu(self.conv2(y)) * scale
        y = y.mean((h > 0) + 1)  # a Python bool from a shape: dims 2 then 3
        out = self.head(y.mean(-1))
        return out if labels is None else (out, labels)


def test_python_decisions_on_values_trace_and_the_graph_computes_the_model():
    model = Checks().eval()
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(Exception):  # noqa: B017 — plain fx cannot
        torch.fx.symbolic_trace(model)
    gm = trace(model, x)
    other = torch.randn(4, 3, 6, 6)  # the batch stays symbolic
    assert torch.allclose(gm(other), model(other), atol=1e-6)
    assert type(model) is Checks  # the class swapped for the trace is restored


def test_a_model_with_value_decisions_folds_and_rewrites_exactly():
    model = Checks().eval()
    x = torch.randn(2, 3, 6, 6)
    same = tuneless.prune(model, channel_ratio=0.0, example_inputs=x)
    assert torch.allclose(same(x), model(x), atol=1e-6)
    small = tuneless.fold(model, sparsity=0.25, example_inputs=x, allocation="uniform",
                         repair="none")
    assert small.conv1.out_channels < 8 and small(torch.randn(3, 3, 6, 6)).shape == (3, 5)


def test_a_model_that_does_not_run_on_its_example_is_still_one_line():
    class Broken(nn.Module):
        def forward(self, x):
            if x.shape[1] != 4:
                raise ValueError("four channels expected")
            return x

    with pytest.raises(UnsupportedModelError, match="cannot trace Broken"):
        trace(Broken(), torch.randn(1, 3, 4, 4))


class Caching(nn.Module):
    """Caches a tensor per device in a dict during forward, as LeViT's attention does; a
    trace must not leave its proxies there."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bias = nn.Parameter(torch.zeros(4, 1, 1))
        self.cache: dict = {}

    def forward(self, x):
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.bias * 2
        if x.shape[1] != 3:  # makes plain fx give up after it filled the cache
            raise ValueError("three channels expected")
        return self.conv(x) + self.cache[key]


def test_tracing_leaves_the_models_caches_and_attributes_as_they_were():
    model = Caching().eval()
    x = torch.randn(2, 3, 4, 4)
    trace(model, x)
    trace(model, x)  # a second trace (fold traces again) sees a clean model too
    assert model.cache == {} and not [k for k in vars(model) if k.startswith("_tensor_constant")]
    assert model(x).shape == (2, 4, 4, 4)


@pytest.mark.parametrize("decide", [
    lambda x: bool(x.sum() > 0),             # a tensor in a Python decision
    lambda x: x.abs().max().item() > 1e-9,   # data turned into a Python number first
    lambda x: int(x.argmax()) >= 0,
])
def test_decisions_on_tensor_data_stay_untraceable(decide):
    """They would describe the example input only: the compressed model could take the
    other branch with modules the analysis never saw."""
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.a(x) if decide(x) else self.b(x)

    with pytest.raises(UnsupportedModelError, match="cannot trace Branchy"):
        trace(Branchy(), torch.randn(1, 3, 4, 4))


class SizeRead(nn.Module):
    """Reads the stream's width and splits another tensor by it (FocalNet's modulation):
    reducing the stream breaks the forward; the inner m1 → m2 group is free. in_python:
    the width goes through int() behind a shape check (value-traced), else it stays a
    traced size (plain fx)."""

    def __init__(self, in_python: bool = True) -> None:
        super().__init__()
        self.in_python = in_python
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 17, 1)
        self.m1, self.m2 = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        if self.in_python and x.shape[1] != 3:
            raise ValueError("three channels expected")
        h = torch.relu(self.a(x))
        width = int(h.shape[1]) if self.in_python else h.shape[1]
        q, k, g = torch.split(self.b(h), (width, width, 1), 1)
        return self.out(self.m2(torch.relu(self.m1(h)))) * (q * k * g).mean()


def test_a_group_whose_size_python_code_reads_elsewhere_is_fixed_and_the_rest_folds():
    from tuneless.graph import find_groups

    model = SizeRead().eval()
    x = torch.randn(2, 3, 4, 4)
    graph = find_groups(model, x)
    stream = next(g for g in graph.groups if any(s.module == "a" for s in g.producers))
    assert stream.fixed and "breaks the forward" in "; ".join(stream.reasons)
    small = tuneless.fold(model, sparsity=0.2, example_inputs=x, allocation="uniform",
                          repair="none")
    assert small.a.out_channels == 8 and small.m1.out_channels < 16
    assert small(torch.randn(3, 3, 4, 4)).shape == (3, 4, 4, 4)


class BuiltInForward(nn.Module):
    """Perceiver's patterns: a module built and called inside forward (`nn.Softmax(dim=-1)
    (scores)`), and an optional input passed through an Identity and tested for None."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(6, 16), nn.Linear(16, 4)
        self.norm_other, self.other_proj = nn.Identity(), nn.Linear(6, 16)

    def forward(self, x, other=None):
        other = self.norm_other(other)  # None when not given
        h = torch.relu(self.up(x))
        if other is not None:
            h = h + self.other_proj(other)
        return nn.Softmax(dim=-1)(self.down(h))


def test_modules_built_in_forward_and_none_results_trace():
    model = BuiltInForward().eval()
    x = torch.randn(3, 6)
    gm = trace(model, x)
    assert torch.allclose(gm(x), model(x), atol=1e-6)
    assert not any(n.target == "other_proj" for n in gm.graph.nodes)  # the branch not taken
    small = tuneless.prune(model, channel_ratio=0.5, example_inputs=x)
    assert small.up.out_features == 8 and small(x).shape == (3, 4)
