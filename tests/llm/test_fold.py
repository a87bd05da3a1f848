import pytest
import torch

from tests.llm.conftest import (
    duplicate_channels,
    duplicate_kv_groups,
    duplicate_query_heads,
    tiny_llama,
)
from tuneless.errors import TunelessError
from tuneless.llm import block_params, fold_llm, is_causal_lm

X = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))


def logits(model):
    with torch.no_grad():
        return model(X).logits


def test_ratio_zero_is_identity():
    m = tiny_llama()
    f = fold_llm(m, head_ratio=0.0, mlp_ratio=0.0)
    assert torch.equal(logits(f), logits(m))


def test_duplicated_mlp_channels_fold_losslessly_to_half():
    m = tiny_llama()
    duplicate_channels(m)
    f = fold_llm(m, head_ratio=0.0, mlp_ratio=0.5)
    assert f.model.layers[0].mlp.gate_proj.out_features == 16
    assert f.config.intermediate_size == 16
    ref = logits(m)
    assert (logits(f) - ref).abs().max() < 1e-5 * ref.abs().max()


@pytest.mark.parametrize("bias", [False, True])
def test_duplicated_kv_groups_fold_losslessly(bias):
    m = tiny_llama(bias=bias)
    duplicate_channels(m)
    duplicate_kv_groups(m)
    f = fold_llm(m, head_ratio=0.5, mlp_ratio=0.5, gqa="kv-groups")
    assert (f.config.num_attention_heads, f.config.num_key_value_heads) == (2, 1)
    assert f.model.layers[1].self_attn.q_proj.out_features == 2 * 16
    assert f.model.layers[1].self_attn.k_proj.out_features == 16
    ref = logits(m)
    assert (logits(f) - ref).abs().max() < 1e-5 * ref.abs().max()


def test_duplicated_query_heads_fold_losslessly_within_kv_groups():
    m = tiny_llama()
    duplicate_query_heads(m)
    f = fold_llm(m, head_ratio=0.5, mlp_ratio=0.0, gqa="query-heads")
    assert (f.config.num_attention_heads, f.config.num_key_value_heads) == (2, 2)
    ref = logits(m)
    assert (logits(f) - ref).abs().max() < 1e-5 * ref.abs().max()


def test_multi_head_attention_folds_heads():
    m = tiny_llama(n_heads=4, n_kv=4)
    f = fold_llm(m, head_ratio=0.5, mlp_ratio=0.25)
    assert (f.config.num_attention_heads, f.config.num_key_value_heads) == (2, 2)
    assert torch.isfinite(logits(f)).all()


def test_sparsity_budget_is_met_and_input_untouched():
    m = tiny_llama(mlp=128)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    dense = block_params(m)
    for s in (0.1, 0.2, 0.3):
        f = fold_llm(m, sparsity=s)
        removed = 1 - block_params(f) / dense
        assert s <= removed < s + 0.05, (s, removed)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_paper_schedule_gives_per_layer_sizes_and_generates():
    m = tiny_llama(layers=8, mlp=64)
    f = fold_llm(m, sparsity=0.2, schedule="paper")
    sizes = f.config.tuneless_layer_sizes
    assert sizes[0] == [4, 2, 64] and sizes[-1] == [4, 2, 64]  # early and last layers untouched
    assert min(s[2] for s in sizes) < 64
    out = f.generate(X[:1], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 16)


def test_paper_mlp_schedule_keeps_heads():
    m = tiny_llama(layers=8, mlp=64)
    f = fold_llm(m, sparsity=0.15, schedule="paper-mlp")
    sizes = f.config.tuneless_layer_sizes
    assert all(s[:2] == [4, 2] for s in sizes) and sizes[-1] == [4, 2, 64]
    assert 0.15 <= 1 - block_params(f) / block_params(m) < 0.17


def test_inner_mlp_schedule_leaves_the_first_and_last_layers_whole():
    m = tiny_llama(layers=8, mlp=64)
    f = fold_llm(m, sparsity=0.15, schedule="inner-mlp", repair="none")
    sizes = f.config.tuneless_layer_sizes
    assert sizes[0] == sizes[-1] == [4, 2, 64]
    assert all(s[:2] == [4, 2] and s[2] < 64 for s in sizes[1:-1])
    assert 0.15 <= 1 - block_params(f) / block_params(m) < 0.17


def test_dict_schedule_and_generate_with_cache():
    m = tiny_llama()
    f = fold_llm(m, schedule={1: {"heads": 0.5, "mlp": 0.5}})
    assert f.config.tuneless_layer_sizes == [[4, 2, 32], [2, 1, 16]]
    out = f.generate(X[:1], max_new_tokens=5, do_sample=False)
    with torch.no_grad():  # cached greedy decoding agrees with a full forward pass
        full = f(out[:, :-1]).logits[0, -1].argmax()
    assert int(out[0, -1]) == int(full)


def test_is_causal_lm():
    assert is_causal_lm(tiny_llama())
    assert not is_causal_lm(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity=0.95), "sparsity"),
    (dict(mlp_ratio=1.0), "mlp_ratio"),
    (dict(sparsity=0.2, gqa="heads"), "gqa"),
    (dict(sparsity=0.2, schedule="zigzag"), "schedule"),
    (dict(sparsity=0.2, schedule={0: (0.1, 0.2)}), "either"),
    (dict(schedule={9: (0.1, 0.2)}), "layer 9"),
    (dict(sparsity=0.2, repair="ar"), "repair"),
    (dict(), "sparsity"),
])
def test_bad_options_raise_tuneless_error(kwargs, match):
    with pytest.raises(TunelessError, match=match):
        fold_llm(tiny_llama(), **kwargs)


def test_not_a_language_model():
    with pytest.raises(TunelessError, match="not a supported"):
        fold_llm(torch.nn.Sequential(torch.nn.Linear(2, 2)), sparsity=0.2)


def test_tuneless_fold_dispatches_language_models():
    import tuneless

    m = tiny_llama()
    duplicate_channels(m)
    f = tuneless.fold(m, head_ratio=0.0, mlp_ratio=0.5)
    assert f.config.intermediate_size == 16
    assert torch.allclose(logits(f), logits(m), atol=1e-5)


def test_tuneless_fold_passes_the_repair_to_language_models():
    import tuneless

    m = tiny_llama()
    calib = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(2))
    plain = tuneless.fold(m, head_ratio=0.0, mlp_ratio=0.5)
    repaired = tuneless.fold(m, head_ratio=0.0, mlp_ratio=0.5, repair="refit", data=calib)
    assert not torch.equal(repaired.model.layers[0].mlp.down_proj.weight,
                           plain.model.layers[0].mlp.down_proj.weight)
    with pytest.raises(TunelessError, match="repair"):  # a CNN repair is refused, not ignored
        tuneless.fold(m, head_ratio=0.0, mlp_ratio=0.5, repair="ar")


@pytest.mark.parametrize("repair", ["refit", "self"])
def test_the_users_model_keeps_its_modes(repair):
    import tuneless

    m = tiny_llama().train()
    m.model.layers[0].eval()  # a mixed-mode model: every module's own mode must survive
    before = {name: mod.training for name, mod in m.named_modules()}
    calib = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(2))
    tuneless.fold(m, head_ratio=0.0, mlp_ratio=0.5, repair=repair, data=calib,
                  calib_samples=2, calib_len=8)
    assert {name: mod.training for name, mod in m.named_modules()} == before


def test_stepped_fold_reaches_the_same_sizes_through_the_midpoint():
    from tuneless.llm.adapters import adapter_for
    from tuneless.llm.fold import stage_plans
    from tuneless.llm.plan import LayerPlan

    m = tiny_llama(layers=8, mlp=64)
    one = fold_llm(m, sparsity=0.15, repair="refit", data=X, steps=1)
    two = fold_llm(m, sparsity=0.15, repair="refit", data=X)  # the default: two steps
    assert two.config.tuneless_layer_sizes == one.config.tuneless_layer_sizes
    assert two.tuneless_report["steps"] == 2 and "steps" not in one.tuneless_report
    for key in ("params_before", "params_after", "achieved_sparsity", "layer_sizes"):
        assert two.tuneless_report[key] == one.tuneless_report[key]
    assert not torch.equal(logits(one), logits(two)) and torch.isfinite(logits(two)).all()
    shapes = adapter_for(m).shapes(m)
    plans = [LayerPlan(4, 2, 64)] * 4 + [LayerPlan(2, 1, 20)] * 4
    mid = stage_plans(shapes, plans, 0.5)
    assert mid[0] == LayerPlan(4, 2, 64) and mid[-1] == LayerPlan(2, 1, 42)  # heads at once
    with pytest.raises(TunelessError, match="steps"):
        fold_llm(m, sparsity=0.15, steps=0)
    plain = fold_llm(m, sparsity=0.15, repair="none")  # the paper's fold: one step
    assert "steps" not in plain.tuneless_report
    assert torch.equal(logits(plain), logits(fold_llm(m, sparsity=0.15, repair="none",
                                                      steps=1)))


@pytest.mark.parametrize("verb, kwargs, match", [
    ("fold", dict(sparsty=0.2), r"unknown fold option\(s\): sparsty \(did you mean sparsity\?\)"),
    ("fold", dict(sparsity=0.2, channel_ratio=0.2), "not channel_ratio"),
    ("prune", dict(sparsity=0.2, critrion="l2"), r"critrion \(did you mean criterion\?\)"),
    ("prune", dict(sparsity=0.2, criterion="magnitude", foo=1), "unknown prune-magnitude"),
    ("prune", dict(sparsity=0.2, criterion="wanda-sp", batches=[]), "give batches as data="),
    ("prune", dict(sparsity=0.2, criterion="flap", n_sample=3), "did you mean n_samples"),
])
def test_wrong_keywords_of_the_public_verbs_are_named_in_one_line(verb, kwargs, match):
    """A typo reaches the user as a TunelessError naming it (and the nearest option), not
    Python's TypeError about an internal function such as fold_llm()."""
    import tuneless

    with pytest.raises(TunelessError, match=match):
        getattr(tuneless, verb)(tiny_llama(), **kwargs)


def test_kmeans_dim_auto_projects_only_where_full_features_would_be_costly(monkeypatch):
    """kmeans_dim="auto" (the default in memory and streamed): SmolLM2-sized MLPs cluster on
    their full features, a 3B model's on a 128-wide projection; forced to project, auto
    equals kmeans_dim=128."""
    from tuneless.llm import decide
    from tuneless.llm.decide import projection_width

    assert projection_width("auto", 1536, 3 * 576) is None  # SmolLM2-135M
    assert projection_width("auto", 4864, 3 * 896) is None  # Qwen2.5-0.5B
    assert projection_width("auto", 8192, 3 * 3072) == 128  # Llama 3.2 3B
    assert projection_width(None, 8192, 3 * 3072) is None
    assert projection_width(64, 48, 3 * 32) == 64 and projection_width(512, 48, 96) is None
    m = tiny_llama(layers=2, mlp=48)
    opts = dict(schedule="uniform", head_ratio=0.0, mlp_ratio=0.5, repair="none")
    full = fold_llm(m, kmeans_dim=None, **opts)
    assert _same(fold_llm(m, **opts), full)
    monkeypatch.setattr(decide, "AUTO_PROJECT_WORK", 0)
    monkeypatch.setattr(decide, "KMEANS_DIM", 8)
    projected = fold_llm(m, **opts)
    assert _same(projected, fold_llm(m, kmeans_dim=8, **opts))
    assert not _same(projected, full)
    for bad in ("full", 0, -3, 1.5, True):
        with pytest.raises(TunelessError, match="kmeans_dim"):
            fold_llm(m, kmeans_dim=bad, **opts)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))
