"""Activation-aware folding features: the whitening identity, and fold_llm using them."""

import pytest
import torch

from tests.llm.conftest import duplicate_channels, tiny_llama
from tuneless.errors import TunelessError
from tuneless.llm import fold_llm
from tuneless.llm.activation_stats import cholesky_factor, collect_stats
from tuneless.llm.adapters import adapter_for, whitening


def _groups(model, i, gqa="query-heads"):
    adapter = adapter_for(model)
    return adapter.layer_groups(i, adapter.shapes(model)[i], gqa)


CALIB = torch.randint(0, 97, (6, 16), generator=torch.Generator().manual_seed(3))


def test_cholesky_factor_reproduces_the_second_moment_even_when_singular():
    x = torch.randn(200, 8, dtype=torch.float64)
    c = x.T @ x / 200
    f = cholesky_factor(c).double()
    assert torch.allclose(f @ f.T, c, rtol=1e-4, atol=1e-5)
    x[:, 7] = x[:, 6]  # rank-deficient: the jitter makes it factorable
    c = x.T @ x / 200
    f = cholesky_factor(c).double()
    assert torch.allclose(f @ f.T, c, atol=1e-4)


def _mlp_inputs(model, ids):
    """What each layer's gate_proj and down_proj actually read on ids."""
    seen = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for name in ("gate_proj", "down_proj"):
            mod = getattr(layer.mlp, name)
            def grab(_m, a, key=(i, name)):
                seen[key] = a[0].reshape(-1, a[0].shape[-1])
            hooks.append(mod.register_forward_pre_hook(grab))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return seen


def test_whitened_rows_measure_pre_activation_differences_on_the_calibration_tokens():
    m = tiny_llama(layers=2)
    stats = collect_stats(m, CALIB, batch_size=4)
    seen = _mlp_inputs(m, CALIB)
    for i, layer in enumerate(m.model.layers):
        g = layer.mlp.gate_proj.weight.detach()
        t = {"gate": g, "up": layer.mlp.up_proj.weight.detach(),
             "down": layer.mlp.down_proj.weight.detach()}
        lg = _groups(m, i)
        feats = lg.mlp.features(m, transform=whitening(stats[i], lg.roles))
        x = seen[(i, "gate_proj")]
        expected = ((x @ (g[0] - g[1])) ** 2).mean()
        d = g.shape[1]
        assert torch.allclose(((feats[0, :d] - feats[1, :d]) ** 2).sum(), expected, rtol=1e-3)
        rms = seen[(i, "down_proj")].pow(2).mean(0).sqrt()
        assert torch.allclose(stats[i].mlp_rms, rms, rtol=1e-4)
        assert torch.allclose(feats[:, 2 * d:], t["down"].T * rms[:, None], rtol=1e-4)
    lg = _groups(m, 0)
    heads = torch.cat([h.features(m, transform=whitening(stats[0], lg.roles))
                       for h in lg.heads])
    assert heads.shape[0] == 4 and torch.isfinite(heads).all()


def test_fold_llm_uses_activation_features_with_calibration_tokens():
    m = tiny_llama(layers=2, mlp=48)
    weights = fold_llm(m, head_ratio=0.0, mlp_ratio=0.5, repair="refit", data=CALIB,
                       features="weights")
    acts = fold_llm(m, head_ratio=0.0, mlp_ratio=0.5, repair="refit", data=CALIB)  # auto
    explicit = fold_llm(m, head_ratio=0.0, mlp_ratio=0.5, repair="refit", data=CALIB,
                        features="activations")
    assert acts.config.intermediate_size == weights.config.intermediate_size == 24
    w_acts = acts.model.layers[0].mlp.gate_proj.weight
    assert torch.equal(w_acts, explicit.model.layers[0].mlp.gate_proj.weight)
    assert not torch.equal(w_acts, weights.model.layers[0].mlp.gate_proj.weight)
    with pytest.raises(TunelessError, match="needs calibration tokens"):
        fold_llm(m, head_ratio=0.0, mlp_ratio=0.5, features="activations", repair="none")
    with pytest.raises(TunelessError, match="features="):
        fold_llm(m, head_ratio=0.0, mlp_ratio=0.5, features="whitened")


def test_duplicates_still_fold_losslessly_with_activation_features():
    m = tiny_llama()
    duplicate_channels(m)
    f = fold_llm(m, head_ratio=0.0, mlp_ratio=0.5, repair="refit", data=CALIB, refit_lambda=1e6)
    x = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = m(x).logits, f(x).logits
    assert (out - ref).abs().max() < 1e-4 * ref.abs().max()
