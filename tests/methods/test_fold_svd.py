"""fold+svd: folding then SVD reaches the requested sparsity, runs, and names bad budgets."""

from __future__ import annotations

import pytest
import torch

from tuneless import TunelessError
from tuneless.evaluate import count_params
from tuneless.methods import get_method
from tuneless.zoo import build_model

torch.set_num_threads(1)


def test_fold_then_svd_meets_the_budget_and_runs():
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    small = get_method("fold+svd")(model, sparsity=0.6, fold_sparsity=0.2, example_inputs=x)
    report = small.tuneless_report
    assert report["achieved_sparsity"] == pytest.approx(0.6, abs=0.02)
    assert 0.15 < report["fold"]["achieved_sparsity"] < 0.25
    assert count_params(small) < count_params(model)
    assert small(x).shape == (2, 10)


def test_fold_share_must_leave_svd_something():
    model = build_model("resnet20").eval()
    with pytest.raises(TunelessError, match="fold_sparsity .* must be below sparsity"):
        get_method("fold+svd")(model, sparsity=0.3, fold_sparsity=0.3)
    with pytest.raises(TunelessError, match="sparsity must be a number in"):
        get_method("fold+svd")(model, sparsity=1.5)
