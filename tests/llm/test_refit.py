"""Least-squares repair of folded LLMs: exact refit, the stream moves back, data-free sampling."""

import pytest
import torch

from tests.llm.conftest import tiny_llama
from tuneless.errors import TunelessError
from tuneless.llm import fold_llm
from tuneless.llm.refit import refit_consumers, ridge_refit, self_generated

G = torch.Generator().manual_seed(3)
CALIB = torch.randint(0, 97, (8, 24), generator=G)
HELD_OUT = torch.randint(0, 97, (4, 24), generator=G)


class Tok:
    """The two attributes self_generated reads from a Hugging Face tokenizer."""

    bos_token_id, eos_token_id = 1, 2


def final_hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states[-1]


def test_ridge_refit_recovers_an_exact_linear_map_and_keeps_weights_at_large_lambda():
    a = torch.randn(200, 6, generator=G)
    w_true, w_old = torch.randn(5, 6, generator=G), torch.randn(5, 6, generator=G)
    y = a @ w_true.T
    assert torch.allclose(ridge_refit(a, y, w_old, 0.0), w_true, atol=1e-4)
    assert torch.allclose(ridge_refit(a, y, w_old, 1e9), w_old, atol=1e-4)


def test_row_weights_count_like_repeated_rows():
    a = torch.randn(30, 4, generator=G)
    y, w_old = torch.randn(30, 3, generator=G), torch.randn(3, 4, generator=G)
    weight = torch.ones(30)
    weight[:10] = 3.0  # the first ten rows three times over
    repeated = torch.cat([a[:10], a[:10], a])
    want = ridge_refit(repeated, torch.cat([y[:10], y[:10], y]), w_old, 0.5)
    assert torch.allclose(ridge_refit(a, y, w_old, 0.5, weight), want, atol=1e-5)


def test_the_refit_target_follows_the_family():
    from tests.llm.test_adapter_contract import _model

    calib = torch.randint(0, 90, (4, 16), generator=torch.Generator().manual_seed(3))
    for family, resolved in (("llama", "stream"), ("gemma3_text", "local")):
        model = _model(family)
        runs = {}
        for target in ("auto", "stream", "local"):
            f = fold_llm(model, head_ratio=0.0, mlp_ratio=0.5, repair="none")
            refit_consumers(model, f, calib, lam=1.0, target=target)
            runs[target] = f.model.layers[1].mlp.down_proj.weight
        assert torch.equal(runs["auto"], runs[resolved]), family
        assert not torch.equal(runs["stream"], runs["local"]), family
    with pytest.raises(TunelessError, match="refit target 'x'"):
        refit_consumers(model, f, calib, target="x")


def test_a_numeric_refit_target_aims_between_local_and_stream():
    """target=α: the local contribution plus α × the drift. 0 and 1 are "local" and "stream"
    exactly; in layer 1 (layer 0's inputs and goal are the same for every α, attention is
    not folded) the ridge solution is linear in the goal, so α = 0.5 is the average."""
    from tests.llm.test_adapter_contract import _model

    calib = torch.randint(0, 90, (4, 16), generator=torch.Generator().manual_seed(3))
    model = _model("llama")
    runs = {}
    for target in ("stream", "local", 0.0, 1.0, 0.5):
        f = fold_llm(model, head_ratio=0.0, mlp_ratio=0.5, repair="none")
        refit_consumers(model, f, calib, lam=1.0, target=target)
        runs[target] = f.model.layers[1].mlp.down_proj.weight
    assert torch.equal(runs[0.0], runs["local"]) and torch.equal(runs[1.0], runs["stream"])
    assert torch.allclose(runs[0.5], (runs["local"] + runs["stream"]) / 2, atol=1e-5)
    for bad in (2.5, -0.1, True):
        with pytest.raises(TunelessError, match="drift share"):
            refit_consumers(model, f, calib, target=bad)


def test_stream_weighting_is_a_refit_option():
    m = tiny_llama(layers=2, mlp=48)
    f = fold_llm(m, head_ratio=0.0, mlp_ratio=0.5, repair="none")
    g = fold_llm(m, head_ratio=0.0, mlp_ratio=0.5, repair="none")
    refit_consumers(m, f, CALIB, lam=1.0)
    refit_consumers(m, g, CALIB, lam=1.0, weighting="stream")
    assert not torch.equal(f.model.layers[0].mlp.down_proj.weight,
                           g.model.layers[0].mlp.down_proj.weight)
    with pytest.raises(TunelessError, match="refit weighting 'x'"):
        refit_consumers(m, g, CALIB, weighting="x")


def test_skipped_first_positions_leave_the_statistics_and_the_least_squares():
    """calib_skip: each sequence's first positions leave the moments, and every least-squares
    problem of the refit sees each sequence from position `skip` on."""
    from tuneless.hooks import Moments
    from tuneless.llm import refit as refit_module

    x = torch.randn(2, 5, 3)
    skipped, sliced = Moments(True, skip=1), Moments(True)
    skipped(None, (x,))
    sliced(None, (x[:, 1:],))
    assert skipped.count == 8 and torch.equal(skipped.mean(), sliced.mean())

    m = tiny_llama(layers=2, mlp=48)
    seen = []

    def spy(a, y, w, lam, weight=None):
        seen.append((a.shape, y.shape))
        return ridge_refit(a, y, w, lam, weight)

    g = fold_llm(m, head_ratio=0.0, mlp_ratio=0.5, repair="none")
    original = refit_module.ridge_refit
    refit_module.ridge_refit = spy
    try:
        refit_consumers(m, g, CALIB, lam=1.0, skip=2)
    finally:
        refit_module.ridge_refit = original
    assert seen and all(a[:2] == (8, 22) and y[:2] == (8, 22) for a, y in seen)
    with pytest.raises(TunelessError, match="calib_skip"):
        fold_llm(m, sparsity=0.2, calib_skip=-1)


@pytest.mark.parametrize("head_ratio, bias", [(0.0, False), (0.5, False), (0.5, True)])
def test_refit_brings_the_folded_stream_back_towards_the_original(head_ratio, bias):
    m = tiny_llama(layers=3, mlp=48, bias=bias)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # Hugging Face initialises biases to zero; make them matter
        for lin in m.modules():
            if isinstance(lin, torch.nn.Linear) and lin.bias is not None:
                lin.bias.copy_(0.5 * torch.randn(lin.bias.shape, generator=gen))
    f = fold_llm(m, head_ratio=head_ratio, mlp_ratio=0.5, repair="none")
    before = [p.clone() for p in (f.model.layers[0].mlp.down_proj.weight,
                                  f.model.layers[0].self_attn.o_proj.weight)]
    g = fold_llm(m, head_ratio=head_ratio, mlp_ratio=0.5, repair="none")
    refit_consumers(m, g, CALIB, lam=1.0)
    assert not torch.equal(g.model.layers[0].mlp.down_proj.weight, before[0])
    assert torch.equal(g.model.layers[0].self_attn.o_proj.weight, before[1]) == (head_ratio == 0)
    for ids, gain in ((CALIB, 0.75), (HELD_OUT, 1.0)):  # a random model generalises little
        ref = final_hidden(m, ids)
        err_fold = (final_hidden(f, ids) - ref).pow(2).mean()
        err_refit = (final_hidden(g, ids) - ref).pow(2).mean()
        assert err_refit < gain * err_fold


def test_fold_llm_repairs_and_their_errors():
    m = tiny_llama()
    with pytest.raises(TunelessError, match="needs tokenizer"):
        fold_llm(m, mlp_ratio=0.5, head_ratio=0.0, repair="refit")
    with pytest.raises(TunelessError, match="does not apply to language models.*'refit' is"):
        fold_llm(m, mlp_ratio=0.5, head_ratio=0.0, repair="data")  # CNN name: BN re-estimation
    with pytest.raises(TunelessError, match="does not apply to language models; choose one of "
                                            "none, refit, self"):
        fold_llm(m, mlp_ratio=0.5, repair="ar")
    plain = fold_llm(m, mlp_ratio=0.5, head_ratio=0.0)
    data = fold_llm(m, mlp_ratio=0.5, head_ratio=0.0, repair="refit", data=CALIB)
    assert data.config.intermediate_size == plain.config.intermediate_size
    assert not torch.equal(data.model.layers[1].mlp.down_proj.weight,
                           plain.model.layers[1].mlp.down_proj.weight)
    with pytest.raises(TunelessError, match="calibration ids"):
        refit_consumers(m, plain, torch.tensor([[5]]))


def test_self_generated_text_is_seeded_and_full_length():
    m = tiny_llama()
    state = torch.random.get_rng_state()
    a = self_generated(m, Tok(), n_samples=3, seq_len=10, seed=4)
    b = self_generated(m, Tok(), n_samples=3, seq_len=10, seed=4)
    assert a.shape == (3, 10) and torch.equal(a, b) and bool((a[:, 0] == 1).all())
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    f = fold_llm(m, mlp_ratio=0.5, head_ratio=0.0, repair="self", tokenizer=Tok(),
                 calib_samples=4, calib_len=12)
    assert f.config.intermediate_size == 16


def test_self_sampling_in_blocks_can_be_shared():
    """Each row is drawn on its own: sampling some blocks gives exactly those rows of
    sampling them all, so ranks can split the work, and blocks change the batching only."""
    m = tiny_llama()
    whole = self_generated(m, Tok(), n_samples=5, seq_len=8, seed=4, blocks=2)
    parts = [self_generated(m, Tok(), n_samples=5, seq_len=8, seed=4, blocks=2, which=range(b,
                                                                                        b + 1))
             for b in (0, 1)]
    assert [len(p) for p in parts] == [2, 3] and torch.equal(torch.cat(parts), whole)
    one = self_generated(m, Tok(), n_samples=5, seq_len=8, seed=4)
    assert torch.equal(one, whole)
    assert not torch.equal(one, self_generated(m, Tok(), n_samples=5, seq_len=8, seed=5))
    with pytest.raises(TunelessError, match="calib_blocks=6 must be between 1 and the number "
                                            "of sequences"):
        self_generated(m, Tok(), n_samples=5, seq_len=8, blocks=6)
    with pytest.raises(TunelessError, match="fold option calib_blocks must be at least 1"):
        fold_llm(m, mlp_ratio=0.5, repair="self", calib_blocks=0)


def test_self_sampled_rows_do_not_depend_on_the_batch():
    """The first n of n + m rows are the n rows sampled alone, and rows from `first_row`
    on are the rows after them: the default fold's held-out rows cost one batch."""
    m = tiny_llama()
    more = self_generated(m, Tok(), n_samples=6, seq_len=9, seed=2)
    assert torch.equal(more[:4], self_generated(m, Tok(), n_samples=4, seq_len=9, seed=2))
    assert torch.equal(more[4:], self_generated(m, Tok(), n_samples=2, seq_len=9, seed=2,
                                                first_row=4))
    assert len({tuple(r) for r in more.tolist()}) == 6  # every row a draw of its own


def test_self_sampling_needs_only_the_model():
    """Data-free repair from the model alone: BOS/EOS come from its (generation) config."""
    m = tiny_llama()
    m.generation_config.bos_token_id, m.generation_config.eos_token_id = 1, 2
    a = self_generated(m, None, n_samples=2, seq_len=8, seed=4)
    assert torch.equal(a, self_generated(m, Tok(), n_samples=2, seq_len=8, seed=4))
    f = fold_llm(m, mlp_ratio=0.5, head_ratio=0.0, repair="self", calib_samples=2,
                 calib_len=8)
    assert f.config.intermediate_size == 16
    m.generation_config.bos_token_id = m.generation_config.eos_token_id = None
    m.config.bos_token_id = m.config.eos_token_id = None
    # no special token named anywhere: each sample starts at a seeded random token
    a = self_generated(m, None, n_samples=3, seq_len=8, seed=4)
    assert a.shape == (3, 8) and torch.equal(a, self_generated(m, None, n_samples=3, seq_len=8,
                                                               seed=4))
    assert len(set(a[:, 0].tolist())) > 1


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "phi", "gpt_neox", "opt"])
@pytest.mark.parametrize("target", ["auto", "local"])
def test_the_recorded_original_streams_give_the_refit_it_computes_itself(family, target):
    """ReferenceTape: the streams the statistics' pass records (here in batches of 4 over 8
    rows, so joined batch by batch) stand in for the refit's own run of the original layers
    (sandwich norms, parallel layers and OPT's flattened layers included)."""
    from tests.llm.test_adapter_contract import _model
    from tuneless.llm.activation_stats import collect_stats
    from tuneless.llm.refit import ReferenceTape

    model = _model(family)
    calib = torch.randint(0, 90, (8, 16), generator=torch.Generator().manual_seed(4))
    runs = []
    for taped in (False, True):
        f = fold_llm(model, head_ratio=0.0, mlp_ratio=0.5, repair="none")
        tape = ReferenceTape.of(model, calib) if taped else None
        collect_stats(model, calib, batch_size=4, tape=tape)
        refit_consumers(model, f, calib, lam=1.0, target=target, reference=tape)
        runs.append(final_hidden(f, calib))
    assert torch.allclose(runs[0], runs[1], atol=1e-5, rtol=1e-4)
    assert ReferenceTape.fits(model, calib) and not ReferenceTape.fits(model, calib, limit=1)
    with pytest.raises(TunelessError, match="recorded on other tokens"):
        refit_consumers(model, f, calib[:4], reference=ReferenceTape.of(model, calib))


def test_the_default_fold_records_the_original_once_and_refits_the_same():
    """fold_llm's statistics pass records the refit's original streams: the fold equals the
    one whose refit runs the original layers itself (the tape switched off by its size)."""
    from tuneless.llm import refit as refit_module

    m = tiny_llama(layers=2, mlp=48)
    taped = fold_llm(m, sparsity=0.2, repair="self", calib_samples=4, calib_len=16)
    limit, refit_module.TAPE_BYTES = refit_module.TAPE_BYTES, 0
    try:
        untaped = fold_llm(m, sparsity=0.2, repair="self", calib_samples=4, calib_len=16)
    finally:
        refit_module.TAPE_BYTES = limit
    for (k, a), b in zip(taped.state_dict().items(), untaped.state_dict().values()):
        assert torch.equal(a, b), k
