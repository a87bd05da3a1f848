"""FLAP in the harness: the fluctuation metric by hand, exact bias compensation, the global
ranking of standardised scores, and a model that plain transformers reloads."""

import pytest
import torch

from tests.llm.conftest import tiny_llama
from tuneless.errors import TunelessError
from tuneless.llm import block_params
from tuneless.llm.adapters import adapter_for, layer_graph
from tuneless.llm.flap import (
    adaptive_plans,
    consumer_moments,
    flap_llm,
    fluctuation_scores,
    unit_costs,
)
from tuneless.llm.plan import LayerPlan, Shape

BATCH = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(5))


def _down_inputs(model, layer=0):
    seen = []
    mod = model.model.layers[layer].mlp.down_proj
    h = mod.register_forward_pre_hook(lambda _m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(BATCH)
    h.remove()
    return torch.cat(seen).double(), mod


def test_fluctuation_scores_by_hand():
    m = tiny_llama()
    x, down = _down_inputs(m)
    w = down.weight.detach().double()
    hand = torch.tensor([x[:, j].var() * w[:, j].pow(2).sum() for j in range(x.shape[1])])
    adapter = adapter_for(m)
    _, per = layer_graph(adapter, adapter.shapes(m), "kv-groups")
    scores = fluctuation_scores(m, per[0], consumer_moments(m, [BATCH]))
    assert torch.allclose(scores[per[0].mlp.id], hand, rtol=1e-9)
    # a kv group (2 query heads of head_dim 16) sums its 32 o_proj columns
    seen = []
    o = m.model.layers[0].self_attn.o_proj
    h = o.register_forward_pre_hook(lambda _m, a: seen.append(a[0].reshape(-1, 64)))
    with torch.no_grad():
        m(BATCH)
    h.remove()
    xo, wo = seen[0].double(), o.weight.detach().double()
    col = xo.var(0) * wo.pow(2).sum(0)
    assert torch.allclose(scores[per[0].heads[0].id], col.reshape(2, 32).sum(1), rtol=1e-9)


def test_bias_compensation_keeps_the_mean_output():
    m = tiny_llama()
    small = flap_llm(m, structure="uniform", schedule={0: (0.0, 0.5)}, batches=[BATCH])
    assert small.model.layers[0].mlp.down_proj.in_features == 16
    outs = []
    for model in (m, small):
        x, down = _down_inputs(model)
        with torch.no_grad():
            outs.append(down(x.float()).double().mean(0))
    gap = (outs[0] - outs[1]).abs().max()
    without = flap_llm(m, structure="uniform", schedule={0: (0.0, 0.5)}, batches=[BATCH],
                       bias=False)
    x, down = _down_inputs(without)
    with torch.no_grad():
        gap_without = (down(x.float()).double().mean(0) - outs[0]).abs().max()
    assert gap < 1e-3 * gap_without, (gap, gap_without)  # outputs are O(1e-3) here


def test_global_ranking_of_standardised_scores():
    # two layers, hidden 4, MLP 4 channels, one kv group of one 2-dim head each (kept:
    # a layer keeps ≥ 1 of each). MLP channel = 12 parameters; removing 3 of the 8 channels
    # (36 of 2·(48 + 32) + norms) needs sparsity ≤ 36/160.
    shape = Shape(hidden=4, head_dim=2, n_q=2, n_kv=2, n_mlp=4)
    total = 2 * shape.params()
    mlp0 = torch.tensor([0.0, 1.0, 2.0, 100.0])  # z: three clustered lows, one outlier
    mlp1 = torch.tensor([0.0, 40.0, 60.0, 100.0])
    heads = torch.tensor([1.0, 1.0])  # equal: z = 0, ranked after every negative z
    plans = adaptive_plans([shape, shape], [(mlp0, heads), (mlp1, heads)], 30.0 / total)
    # z of mlp0: ≈ −0.54, −0.52, −0.50, 1.50; of mlp1: ≈ −1.21, −0.17, 0.17, 1.21 → the
    # three lowest are mlp1[0], mlp0[0], mlp0[1]
    assert plans == [LayerPlan(2, 2, 2), LayerPlan(2, 2, 3)]


def test_adaptive_flap_meets_the_budget_and_reloads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneless.llm import save_folded

    m = tiny_llama(mlp=64, layers=3)
    small = flap_llm(m, sparsity=0.3, batches=[BATCH])
    removed = 1 - block_params(small) / block_params(m)
    assert 0.29 <= removed < 0.36
    assert small.config.mlp_bias and small.model.layers[0].mlp.down_proj.bias is not None
    save_folded(small, tmp_path / "out")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.allclose(back(BATCH).logits, small(BATCH).logits, atol=1e-5)


def test_flap_needs_calibration_and_a_budget():
    with pytest.raises(TunelessError, match="calibration"):
        flap_llm(tiny_llama(), sparsity=0.2)
    with pytest.raises(TunelessError, match="sparsity"):
        flap_llm(tiny_llama(), batches=[BATCH])


@pytest.mark.parametrize("mlp_mats, mlp_bias", [(3, False), (3, True), (2, False), (2, True)])
def test_unit_costs_are_what_one_unit_takes_from_the_layer(mlp_mats, mlp_bias):
    """FLAP's global ranking spends the budget by these costs: an MLP channel of a gate-less
    MLP carries two weight vectors, not three (Shape.params is checked exactly against every
    family's modules in the adapter contract)."""
    s = Shape(64, 16, 4, 2, 32, attn_bias=True, o_bias=True, mlp_bias=mlp_bias,
              mlp_mats=mlp_mats)
    mlp, head = unit_costs(s)
    assert mlp == s.params() - s.params(n_mlp=31)
    assert head == s.params() - s.params(n_q=2, n_kv=1)  # one kv group and its 2 queries


@pytest.mark.parametrize("family", ["qwen2", "gpt2", "gpt_neox", "phi3"])
def test_the_default_compensates_what_each_family_can_save_and_reloads(family, tmp_path):
    """bias=None: Qwen2 (no config flag, no o/down biases) skips the compensation with a
    warning; GPT-2 and GPT-NeoX add it to the biases they have; Phi-3 (one global head
    count) and GPT-NeoX (heads cannot fold) rank MLP channels only. Each reloads in plain
    transformers with the same logits."""
    from transformers import AutoModelForCausalLM

    from tests.llm.test_adapter_contract import _logits, _model
    from tuneless.llm import save_folded

    m = _model(family)
    ids = torch.randint(0, m.config.vocab_size, (3, 16), generator=torch.Generator().manual_seed(5))
    if family == "qwen2":
        with pytest.warns(UserWarning, match="compensation skipped.*no config.mlp_bias"):
            small = flap_llm(m, 0.2, batches=[ids])
        with pytest.raises(TunelessError, match="use bias=False"):
            flap_llm(m, 0.2, batches=[ids], bias=True)
    else:
        small = flap_llm(m, 0.2, batches=[ids])
    assert 0.19 <= 1 - block_params(small) / block_params(m) < 0.3
    if family in ("gpt2", "gpt_neox"):  # the compensation moved the existing biases
        name = ("transformer.h.0.mlp.c_proj" if family == "gpt2"
                else "gpt_neox.layers.0.mlp.dense_4h_to_h")
        assert not torch.equal(small.get_submodule(name).bias, m.get_submodule(name).bias)
    per_layer = getattr(small.config, "tuneless_layer_sizes", None) is not None
    save_folded(small, tmp_path / "out")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=per_layer)
    assert torch.equal(_logits(back.eval()), _logits(small))
