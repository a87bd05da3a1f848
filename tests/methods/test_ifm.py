"""IFM: greedy merging pairs duplicates exactly, hits the budget and leaves the input alone."""

import copy

from tuneless.evaluate import count_params
from tuneless.methods.ifm import ifm, weight_features
from tuneless.zoo import build_model

from .fold_models import X32, DuplicatedCNN, _same_state


def test_duplicates_merge_exactly():
    model = DuplicatedCNN()
    small = ifm(model, channel_ratio=0.5, example_inputs=X32)
    assert small.conv1.out_channels == 4
    assert (small(X32) - model(X32)).abs().max() <= 1e-5


def test_budget_and_input_untouched():
    model = build_model("resnet20").eval()
    before = copy.deepcopy(model)
    small = ifm(model, sparsity=0.5, example_inputs=X32)
    assert abs(small.tuneless_report["achieved_sparsity"] - 0.5) <= 0.01
    assert count_params(small) == small.tuneless_report["params_after"]
    assert _same_state(model, before)


def test_features_flag_consumer_columns_and_skip_norms():
    model = DuplicatedCNN()
    from tuneless.graph import find_groups

    g = find_groups(model, X32).reducible[0]
    feats, summed = weight_features(model, g)
    assert feats.shape == (8, 27 + 72)  # conv1 rows (3·3·3) + conv2 columns (8·3·3)
    assert summed.sum() == 72 and not summed[:27].any()
