import pytest
import torch

from tests.llm.conftest import tiny_llama
from tuneless.errors import TunelessError
from tuneless.llm import block_params, magnitude_prune_llm, svd_llm, wanda_sp_llm

X = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))


def logits(m):
    with torch.no_grad():
        return m(X).logits


def zero_second_half_of_mlp(model, down_only=False):
    with torch.no_grad():
        for layer in model.model.layers:
            mlp = layer.mlp
            h = mlp.gate_proj.out_features // 2
            if not down_only:
                mlp.gate_proj.weight[h:] = 0
                mlp.up_proj.weight[h:] = 0
            mlp.down_proj.weight[:, h:] = 0


def test_magnitude_prunes_dead_channels_losslessly():
    m = tiny_llama()
    zero_second_half_of_mlp(m)
    p = magnitude_prune_llm(m, head_ratio=0.0, mlp_ratio=0.5)
    assert p.config.intermediate_size == 16
    assert torch.allclose(logits(p), logits(m), atol=1e-5)


def test_wanda_sp_prunes_unread_channels_losslessly():
    m = tiny_llama()
    zero_second_half_of_mlp(m, down_only=True)  # channels exist but nothing reads them
    batches = [torch.randint(0, 97, (1, 16))]
    p = wanda_sp_llm(m, head_ratio=0.0, mlp_ratio=0.5, batches=batches)
    assert torch.allclose(logits(p), logits(m), atol=1e-5)


def test_wanda_sp_needs_calibration():
    with pytest.raises(TunelessError, match="calibration"):
        wanda_sp_llm(tiny_llama(), sparsity=0.2)


@pytest.mark.parametrize("s", [0.1, 0.3])
def test_baselines_meet_the_same_budget(s):
    m = tiny_llama(mlp=128)
    dense = block_params(m)
    for small in (magnitude_prune_llm(m, sparsity=s), svd_llm(m, sparsity=s),
                  wanda_sp_llm(m, sparsity=s, batches=[X[:1]])):
        removed = 1 - block_params(small) / dense
        assert s - 0.01 <= removed < s + 0.05, (s, removed)
        assert torch.isfinite(logits(small)).all()


def test_svd_at_zero_sparsity_keeps_the_model():
    m = tiny_llama()
    s = svd_llm(m, sparsity=0.0)
    assert block_params(s) == block_params(m)
    assert torch.equal(logits(s), logits(m))


def test_svd_of_low_rank_weights_is_exact():
    m = tiny_llama(mlp=128)
    with torch.no_grad():  # make every projection rank 8
        for layer in m.model.layers:
            for lin in (*layer.self_attn.children(), *layer.mlp.children()):
                if isinstance(lin, torch.nn.Linear):
                    w = lin.weight
                    lin.weight.copy_(w[:, :8] @ torch.randn(8, w.shape[1]) * 0.1)
    s = svd_llm(m, sparsity=0.5)
    assert torch.allclose(logits(s), logits(m), atol=1e-4)


def test_pruning_baselines_take_folding_s_repair_on_equal_terms():
    from tests.llm.conftest import tiny_llama
    from tuneless.llm import magnitude_prune_llm, wanda_sp_llm

    m = tiny_llama(layers=3, mlp=48)
    calib = torch.randint(0, 97, (8, 24), generator=torch.Generator().manual_seed(1))

    def err(small):
        with torch.no_grad():
            a = small(input_ids=calib, output_hidden_states=True).hidden_states[-1]
            b = m(input_ids=calib, output_hidden_states=True).hidden_states[-1]
        return (a - b).pow(2).mean()

    for prune, extra in ((magnitude_prune_llm, {"data": calib}),
                         (wanda_sp_llm, {"batches": [calib]})):
        plain = prune(m, head_ratio=0.0, mlp_ratio=0.5, **extra) if prune is wanda_sp_llm \
            else prune(m, head_ratio=0.0, mlp_ratio=0.5)
        fixed = prune(m, head_ratio=0.0, mlp_ratio=0.5, repair="refit", refit_lambda=0.3,
                      **extra)
        assert fixed.config.intermediate_size == plain.config.intermediate_size == 24
        assert fixed.tuneless_report["repair"] == "refit"
        assert err(fixed) < 0.75 * err(plain)


def test_whitened_svd_keeps_the_output_directions_of_the_inputs_it_sees():
    """Hand-checkable case: inputs that only ever move along e0 (plus a little e1), W whose
    largest singular direction is e2 (never excited). Plain rank-1 SVD keeps the useless e2
    direction; the whitened one keeps what the inputs excite, and its error equals the
    discarded singular value² of W·L (Eckart–Young in the whitened space)."""
    from tuneless.llm.activation_stats import cholesky_factor
    from tuneless.llm.svd import whitened_factorise
    from tuneless.methods.svd import factorise

    lin = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 10.0]]))
    x = torch.zeros(1000, 3)
    x[:, 0] = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    x[:, 1] = 0.1 * torch.randn(1000, generator=torch.Generator().manual_seed(1))
    c = x.T.double() @ x.double() / len(x)
    factor = cholesky_factor(c)

    def err(pair):
        with torch.no_grad():
            return float(((lin(x) - pair(x)) ** 2).sum(1).mean())

    plain, white = factorise(lin, 1), whitened_factorise(lin, 1, factor)
    assert err(white) < 0.01 * err(plain)  # plain keeps e2, which the inputs never excite
    s = torch.linalg.svdvals(lin.weight.detach().double() @ factor.double())
    assert abs(err(white) - float(s[1] ** 2)) < 1e-3 * float(s[0] ** 2)


def test_svd_llm_whitened_on_self_samples_runs_and_keeps_the_budget():
    from tests.llm.conftest import tiny_llama
    from tuneless.llm import block_params, svd_llm

    m = tiny_llama(layers=2, mlp=48)
    plain, white = svd_llm(m, 0.3), svd_llm(m, 0.3, whiten="self", calib_samples=4,
                                           calib_len=16)
    assert block_params(plain) == block_params(white) < block_params(m)
    ids = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        assert torch.isfinite(white(input_ids=ids).logits).all()


def test_prune_passes_its_seed_to_every_language_model_criterion():
    import tuneless

    m = tiny_llama(mlp=64)
    m.config.bos_token_id, m.config.eos_token_id = 1, 2
    options = {"sparsity": 0.2, "criterion": "magnitude", "repair": "self",
               "calib_samples": 2, "calib_len": 8}
    via_prune = tuneless.prune(m, seed=3, **options)
    direct = magnitude_prune_llm(m, 0.2, repair="self", calib_samples=2, calib_len=8, seed=3)
    other = tuneless.prune(m, seed=0, **options)
    assert torch.equal(logits(via_prune), logits(direct))  # the seed picks the samples
    assert not torch.equal(logits(via_prune), logits(other))


def test_prune_defaults_to_obs_on_a_language_model():
    import tuneless
    from tuneless.methods.prune import LLM_DEFAULT_CRITERION

    model = tiny_llama()
    small = tuneless.prune(model, sparsity=0.2)  # was: "criterion 'l1' does not apply"
    assert LLM_DEFAULT_CRITERION == "obs" and small.tuneless_report["method"].startswith("obs")


@pytest.mark.parametrize("bad, message", [
    (torch.randn(2, 16), "must be integer token ids, got dtype torch.float32"),
    (torch.full((2, 16), 500), "token ids 500..500, outside the model's vocabulary"),
    (torch.zeros(2, 3, 4, dtype=torch.long), r"shape \(batch, seq_len\), got \(2, 3, 4\)"),
])
def test_token_data_that_cannot_be_embedded_is_named(bad, message):
    import tuneless

    model = tiny_llama()
    with pytest.raises(TunelessError, match=message):
        tuneless.fold(model, sparsity=0.2, repair="refit", data=bad)
    with pytest.raises(TunelessError, match=message.replace("data", "batches")):
        tuneless.prune(model, sparsity=0.2, criterion="wanda-sp", data=bad)
