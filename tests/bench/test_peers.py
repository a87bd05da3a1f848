"""Torch-Pruning rows run at tuneless's parameter budget, so the comparison is at equal size."""

import pytest
import torch

from tuneless.errors import TunelessError
from tuneless.modelio import build_arch

tp = pytest.importorskip("torch_pruning")

from benchmarks.suites.peers import tp_prune  # noqa: E402

X = torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("criterion", ["l1", "bn", "taylor"])
def test_budget_matches_a_parameter_sparsity(criterion):
    model = build_arch("resnet20").eval()
    labelled = (torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
    small = tp_prune(model, 0.5, criterion, X, labelled, steps=8)
    n0 = sum(p.numel() for p in model.parameters())
    n1 = sum(p.numel() for p in small.parameters())
    assert abs(1 - n1 / n0 - 0.5) <= 0.03  # the closest the uniform channel ratio gets
    assert small(X).shape == (2, 10) and small.fc.out_features == 10
    assert sum(p.numel() for p in model.parameters()) == n0  # input untouched


def test_taylor_needs_labels():
    with pytest.raises(TunelessError, match="labelled"):
        tp_prune(build_arch("resnet20").eval(), 0.3, "taylor", X)


def test_zero_padding_shortcut_falls_back_to_whole_residual_streams():
    """Torch-Pruning mis-couples option-A (F.pad) shortcuts; the fallback still prunes."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "breadth"))
    from option_a_resnet import resnet20

    model = resnet20().eval()
    small = tp_prune(model, 0.3, "l1", X, steps=8)
    assert small(X).shape == (2, 10)
    n0 = sum(p.numel() for p in model.parameters())
    n1 = sum(p.numel() for p in small.parameters())
    assert 0.2 <= 1 - n1 / n0 <= 0.4
    assert getattr(small, "tp_note", "").startswith("residual streams left whole")
