from collections import Counter

import pytest
import torch

from tests.llm.conftest import duplicate_channels, duplicate_kv_groups, tiny_llama
from tuneless.errors import TunelessError
from tuneless.llm import block_params, obs_prune_llm
from tuneless.llm.obs import obs_order, obs_steps

X = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))


def _columns(n, c=1):
    return torch.arange(n * c).reshape(n, c)


def test_uncorrelated_inputs_remove_the_smallest_output_energy_first():
    # H = diag(s): removing column j costs s_j·||w_j||², nothing can compensate it
    s = torch.tensor([1.0, 4.0, 0.25, 2.0])
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 0.5]])
    # costs: 1·1 = 1, 4·2 = 8, 0.25·5 = 1.25, 2·1.25 = 2.5
    assert obs_order(torch.diag(s), w, _columns(4), 3, block=1, damp=0.0) == [0, 2, 3]


def test_a_column_the_others_reproduce_goes_before_a_smaller_independent_one():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 3, generator=g, dtype=torch.float64)
    z = torch.cat([z, z[:, :1] + z[:, 1:2]], 1)  # columns 0, 1, 3 linearly dependent
    w = torch.tensor([[1.0, 1.0, 0.05, 10.0]], dtype=torch.float64)
    # magnitude would drop column 2; OBS drops one of the dependent three at no cost
    assert obs_order(z.T @ z / 500, w, _columns(4), 1, damp=1e-9)[0] in (0, 1, 3)


def test_the_added_errors_sum_to_the_least_squares_residual_of_the_kept_columns():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(400, 4, generator=g, dtype=torch.float64) @ torch.randn(
        4, 10, generator=g, dtype=torch.float64) + 0.3 * torch.randn(400, 10, generator=g,
                                                                     dtype=torch.float64)
    w = torch.randn(3, 10, generator=g, dtype=torch.float64)
    h = z.T @ z / 400

    def residual(kept_units):  # refit of the kept columns, mean squared output error
        cols = [c for u in kept_units for c in (2 * u, 2 * u + 1)]
        sol = torch.linalg.lstsq(z[:, cols], z @ w.T).solution
        return float((z[:, cols] @ sol - z @ w.T).pow(2).sum(1).mean())

    steps = list(obs_steps(h, w, _columns(5, 2), 2, damp=0.0))  # two-column units
    gone = [u for chosen, _ in steps for u in chosen]
    assert [len(chosen) for chosen, _ in steps] == [1, 1]  # several columns: one at a time
    assert sum(cost for _, cost in steps) == pytest.approx(
        residual([u for u in range(5) if u not in gone]), rel=1e-9)
    # the first step is the best single unit to remove
    assert gone[0] == min(range(5), key=lambda u: residual([v for v in range(5) if v != u]))


def test_duplicated_mlp_channels_lose_one_copy_each():
    m = tiny_llama()
    duplicate_channels(m)
    calib = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))
    p = obs_prune_llm(m, mlp_ratio=0.5, head_ratio=0.0, schedule="uniform", repair="none",
                      data=calib, block=1, damp=1e-6)
    assert p.config.intermediate_size == 16
    # one copy of each pair kept, and the pruned model's MLP then computes half the sum:
    # doubling the kept down columns restores the original exactly
    with torch.no_grad():
        for layer in p.model.layers:
            layer.mlp.down_proj.weight *= 2
    assert torch.allclose(p(X).logits, m(X).logits, atol=1e-4)


def test_duplicated_kv_groups_lose_one_copy():
    m = tiny_llama(n_heads=4, n_kv=2)
    duplicate_kv_groups(m)
    with torch.no_grad():  # the copy's o_proj columns carry a larger weight than the original's
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight[:, 32:] *= 3
            layer.self_attn.o_proj.weight[:, :32] /= 3
    p = obs_prune_llm(m, head_ratio=0.5, mlp_ratio=0.0, schedule="uniform", repair="none",
                      calib_samples=4, calib_len=16, damp=1e-6)
    assert p.config.num_key_value_heads == 1 and p.config.num_attention_heads == 2
    # the larger-weight copy was kept (the other costs less); scaling it back restores all
    with torch.no_grad():
        for layer in p.model.layers:
            layer.self_attn.o_proj.weight *= (3 + 1 / 3) / 3
        assert torch.allclose(p(X).logits, m(X).logits, atol=1e-4)


def test_budget_repair_and_dispatch():
    import tuneless

    m = tiny_llama(layers=3, mlp=64)
    p = tuneless.prune(m, sparsity=0.2, criterion="obs", schedule="uniform", head_ratio=0.0,
                       calib_samples=2, calib_len=8)
    assert 1 - block_params(p) / block_params(m) >= 0.2
    assert p.tuneless_report["method"] == "obs" and p.tuneless_report["repair"] == "self"
    with pytest.raises(TunelessError, match="damp"):
        obs_prune_llm(m, sparsity=0.2, damp=-1.0)


def test_layer_by_layer_moments_equal_the_whole_model_pass():
    from tuneless.llm.activation_stats import _moments
    from tuneless.llm.obs import _OriginalStream

    m = tiny_llama(layers=3, mlp=64)
    ids = torch.randint(0, 97, (20, 16), generator=torch.Generator().manual_seed(0))
    whole = _moments(m, ids, {"down": True, "o": True}, 16, False)
    stream = _OriginalStream(m, ids)
    for i in (0, 2):  # layer 1 is walked through without statistics
        walked = stream.moments(i, {"down": True, "o": True})
        for name in ("down", "o"):
            assert torch.allclose(walked[name].mean(), whole[i][name].mean(), rtol=1e-10)
    with pytest.raises(TunelessError, match="asked for after"):
        stream.moments(1, {"down": True})


def test_a_bfloat16_model_stays_bfloat16():
    m = tiny_llama(layers=2, mlp=64).to(torch.bfloat16)
    m.config.bos_token_id = 1
    p = obs_prune_llm(m, mlp_ratio=0.25, head_ratio=0.0, schedule="uniform",
                      calib_samples=2, calib_len=8)
    assert {t.dtype for t in p.parameters()} == {torch.bfloat16}
    assert p.config.intermediate_size == 48
    with torch.no_grad():
        assert torch.isfinite(p(X).logits.float()).all()


@pytest.mark.parametrize("schedule", ["uniform", {0: (0.0, 0.25)}])  # every layer / the first
def test_the_second_moments_walk_records_the_original_once_for_the_refit(schedule):
    """The walk that measures OBS's second moments also records what the refit reads of the
    original (ReferenceTape, also through layers after the last one decided): each original
    layer runs once, and the result equals the refit that runs them again itself."""
    from tuneless.llm import refit as refit_module

    m = tiny_llama(layers=3, mlp=64)
    kwargs = dict(schedule=schedule, head_ratio=0.0, calib_samples=4, calib_len=16)
    if schedule == "uniform":
        kwargs["mlp_ratio"] = 0.25
    runs = {True: Counter(), False: Counter()}
    for taped in (True, False):
        hooks = [layer.register_forward_hook(lambda *_a, i=i, c=runs[taped]: c.update([i]))
                 for i, layer in enumerate(m.model.layers)]
        limit = refit_module.TAPE_BYTES
        refit_module.TAPE_BYTES = limit if taped else 0
        try:
            out = obs_prune_llm(m, **kwargs)
        finally:
            refit_module.TAPE_BYTES = limit
            for h in hooks:
                h.remove()
        taped and (taped_out := out)
    # the same sampling and walk; without the tape the refit runs each decided layer once
    # more (after the last decided one the walk runs the layers the refit would have run)
    assert runs[False] - runs[True] == Counter([0, 1, 2] if schedule == "uniform" else [0])
    assert runs[True] - runs[False] == Counter()
    for (k, a), b in zip(taped_out.state_dict().items(), out.state_dict().values()):
        assert torch.equal(a, b), k
