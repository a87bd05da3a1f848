"""The LLM benchmark's method names map to the right schedule and repair."""

import pytest

from benchmarks.suites.llm_bench import METHODS, _fold_parts, _schedule


@pytest.mark.parametrize("method, parts", [
    ("fold-paper-mlp-self", ("paper-mlp", "self")),
    ("fold-paper-mlp-data", ("paper-mlp", "data")),
    ("fold-paper", ("paper", None)),
    ("fold-uniform-self", ("uniform", "self")),
    ("wanda-sp", None),
    ("svd", None),
])
def test_fold_parts(method, parts):
    assert method in METHODS
    assert _fold_parts(method) == parts
    assert _schedule(method) == (parts[0] if parts else "uniform")
