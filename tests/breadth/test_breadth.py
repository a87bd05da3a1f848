"""Breadth: every zoo model, ten torchvision models and the graph patterns prune correctly.

The table of results is docs/breadth.md (python tests/breadth/make_table.py).
"""

import pytest
import torch
from breadth_cases import TOL, cases, check
from graph_patterns import NothingToReduce

from tuneless.errors import UnsupportedModelError
from tuneless.methods.prune import prune


@pytest.mark.parametrize("name", list(cases()))
def test_prune_30_percent_and_identity(name):
    if name.startswith("torchvision:"):
        pytest.importorskip("torchvision")
    row = check(name)
    assert row["same_output_shape"], row
    assert row["pruned_params"] < row["params"], row
    assert row["identity_max_diff"] <= TOL, row
    assert abs(row["achieved_sparsity"] - 0.3) <= 0.01, row


def test_model_with_nothing_reducible_gets_a_clear_message():
    with pytest.raises(UnsupportedModelError, match="nothing to reduce in NothingToReduce"):
        prune(NothingToReduce(), sparsity=0.3, example_inputs=torch.randn(1, 3, 2, 2))
