import json

import pytest
import torch

from tests.llm.conftest import tiny_llama
from tuneless.errors import TunelessError
from tuneless.llm import fold_checkpoint, fold_llm, load_folded
from tuneless.llm.stream import check_checkpoint

X = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(4))


@pytest.fixture
def sharded(tmp_path):
    m = tiny_llama(layers=3, mlp=48)
    m.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert len(list((tmp_path / "src").glob("*.safetensors"))) > 1
    return m, tmp_path / "src"


@pytest.mark.parametrize("schedule", ["uniform", "paper", None])
def test_streaming_fold_equals_in_memory_fold(sharded, tmp_path, schedule):
    m, src = sharded
    sparsity = 0.1 if schedule is None else 0.25  # paper-mlp reaches 10% on 3 layers
    out = fold_checkpoint(src, tmp_path / "dst", sparsity, schedule=schedule, kmeans_dim=None,
                          refine=True, repair="none", progress=False)
    want = fold_llm(m, sparsity=sparsity, schedule=schedule, refine=True, repair="none")
    got = load_folded(out)
    if schedule is None:  # both default to the paper's MLP schedule: attention untouched
        assert [a.self_attn.o_proj.in_features for a in got.model.layers] == \
            [a.self_attn.o_proj.in_features for a in m.model.layers]
        assert any(a.mlp.down_proj.in_features < 48 for a in got.model.layers)
    assert check_checkpoint(out) == sum(p.numel() for p in got.parameters())
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3  # one shard per layer at least
    with torch.no_grad():
        assert torch.allclose(got(X).logits, want(X).logits, atol=1e-6)


def test_streaming_refuses_existing_output_and_leaves_no_temp(sharded, tmp_path):
    _, src = sharded
    (tmp_path / "dst").mkdir()
    with pytest.raises(TunelessError, match="already exists"):
        fold_checkpoint(src, tmp_path / "dst", 0.2, progress=False)
    with pytest.raises(TunelessError, match="config.json"):
        fold_checkpoint(tmp_path / "dst", tmp_path / "dst2", 0.2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_streamed_per_layer_fold_loads_with_the_shipped_modeling_file(sharded, tmp_path):
    from transformers import AutoModelForCausalLM

    m, src = sharded
    out = fold_checkpoint(src, tmp_path / "dst", 0.25, schedule="paper", kmeans_dim=None,
                          refine=True, repair="none", progress=False)
    cfg = json.loads((out / "config.json").read_text())
    if "tuneless_layer_sizes" not in cfg:
        pytest.skip("the plan came out uniform for this tiny model")
    assert (out / "modeling_tuneless.py").is_file()
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.equal(remote(X).logits, load_folded(out)(X).logits)


CALIB = torch.randint(0, 97, (6, 20), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("schedule", ["uniform", "paper"])
def test_streamed_repaired_fold_equals_the_in_memory_one(sharded, tmp_path, schedule):
    m, src = sharded
    out = fold_checkpoint(src, tmp_path / "dst", 0.25, schedule=schedule, kmeans_dim=None,
                          refine=True, repair="refit", data=CALIB, progress=False)
    want = fold_llm(m, sparsity=0.25, schedule=schedule, refine=True, repair="refit",
                    data=CALIB)
    plain = fold_llm(m, sparsity=0.25, schedule=schedule, refine=True, repair="none")
    got = load_folded(out)
    with torch.no_grad():
        diff = (got(X).logits - want(X).logits).abs().max()
        assert diff < 1e-4
        assert (plain(X).logits - want(X).logits).abs().max() > 100 * diff  # a real repair


@pytest.mark.parametrize("family, layers, head_ratio", [
    ("gemma3_text", 4, 0.5),  # sandwich and q/k norms, rotary tables, per-layer masks
    ("granite", 3, 0.0),  # sublayers scaled before the residual add: the refit aims at
    # output / multiplier; embeddings and logits scaled too
    ("olmo2", 3, 0.5),  # norms on sublayer outputs only; q/k norm gains fold with heads
    ("exaone4", 3, 0.5),  # the same norms, per-head q/k norms
    ("hyperclovax", 3, 0.5),  # output norms and a residual multiplier together
    ("granite_swa", 4, 0.5),  # per-head attention sinks fold with their heads
    ("nemotron", 3, 0.0),  # an MLP without a gate
    ("phi", 3, 0.5),  # attention and MLP in parallel: each consumer aims past the other
    ("gptj", 3, 0.0),  # parallel, transformer.h, the MLP width in n_inner
    ("opt", 3, 0.0),  # the MLP on the decoder layer itself, flattened tokens inside it
    ("phi3", 3, 0.5),  # fused qkv and gate_up, split by the config's head count at run time
    ("glm4", 3, 0.5),  # one gate_up_proj, sandwich norms
    ("gpt_neox", 3, 0.0),  # fused query_key_value, interleaved per head; parallel
])
def test_streamed_repair_of_other_families_equals_the_in_memory_one(family, layers,
                                                                    head_ratio, tmp_path):
    from tests.llm.test_adapter_contract import _config

    cfg, cls = _config(family, layers=layers)
    if family == "gemma3_text":  # sliding and full attention alternate
        cfg.layer_types = ["sliding_attention", "full_attention"] * 2
    torch.manual_seed(0)
    m = cls(cfg).eval()
    m.save_pretrained(tmp_path / "src", max_shard_size="60KB")
    calib = torch.randint(0, 90, (4, 16), generator=torch.Generator().manual_seed(1))
    out = fold_checkpoint(tmp_path / "src", tmp_path / "dst", head_ratio=head_ratio,
                          mlp_ratio=0.5, kmeans_dim=None, repair="refit", data=calib,
                          progress=False)
    want = fold_llm(m, head_ratio=head_ratio, mlp_ratio=0.5, repair="refit", data=calib)
    got = load_folded(out)
    assert check_checkpoint(out) == sum(p.numel() for p in got.parameters())
    with torch.no_grad():
        x = calib[:2]
        torch.testing.assert_close(got(x).logits, want(x).logits, rtol=1e-4, atol=1e-4)


def test_streaming_names_gpt2_s_conv1d_projections(tmp_path):
    from tests.llm.test_adapter_contract import _model

    _model("gpt2").save_pretrained(tmp_path / "src")
    with pytest.raises(TunelessError, match="gpt2's Conv1D projections"):
        fold_checkpoint(tmp_path / "src", tmp_path / "dst", 0.2, progress=False)
    assert not (tmp_path / "dst").exists()


def test_streamed_default_is_the_in_memory_default_self_repair(sharded, tmp_path):
    """repair="self" streamed: the checkpoint samples its own calibration text one layer at a
    time (the same tokens as the loaded model samples), then the streamed refit; equal to
    the in-memory default fold."""
    m, src = sharded
    out = fold_checkpoint(src, tmp_path / "dst", 0.25, schedule="uniform", kmeans_dim=None,
                          calib_samples=4, calib_len=12, progress=False)
    want = fold_llm(m, sparsity=0.25, schedule="uniform", calib_samples=4, calib_len=12)
    plain = fold_llm(m, sparsity=0.25, schedule="uniform", repair="none")
    with torch.no_grad():
        diff = (load_folded(out)(X).logits - want(X).logits).abs().max()
        assert diff < 1e-4
        assert (plain(X).logits - want(X).logits).abs().max() > 100 * diff


def test_streamed_sampling_model_samples_what_the_loaded_model_samples(sharded):
    from transformers import AutoConfig

    from tuneless.llm.adapters import adapter_for_config
    from tuneless.llm.refit import self_generated
    from tuneless.llm.stream import _Reader, _weight_map
    from tuneless.llm.stream_shell import sampling_model

    m, src = sharded
    config = AutoConfig.from_pretrained(str(src))
    weights = _weight_map(src)
    lazy = sampling_model(config, adapter_for_config(config), _Reader(src, weights).get,
                          list(weights))
    assert not any(p.is_meta for p in lazy.parameters())
    assert torch.equal(self_generated(lazy, None, 3, 9, seed=2), self_generated(m, None, 3, 9,
                                                                                 seed=2))


def test_streamed_repair_names_what_it_cannot_do(sharded, tmp_path):
    _, src = sharded
    with pytest.raises(TunelessError, match="'self', 'refit' or 'none'"):
        fold_checkpoint(src, tmp_path / "a", 0.2, repair="data", progress=False)
    with pytest.raises(TunelessError, match="needs data= token ids or tokenizer="):
        fold_checkpoint(src, tmp_path / "b", 0.2, repair="refit", progress=False)
    with pytest.raises(TunelessError, match="integer"):
        fold_checkpoint(src, tmp_path / "c", 0.2, repair="refit", data=torch.rand(2, 8),
                        progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_streamed_repair_of_a_bfloat16_checkpoint_keeps_its_dtype(tmp_path):
    m = tiny_llama(layers=2, mlp=48).to(torch.bfloat16)
    m.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    out = fold_checkpoint(tmp_path / "src", tmp_path / "dst", 0.25, repair="refit", data=CALIB,
                          progress=False)
    got = load_folded(out)
    assert {p.dtype for p in got.parameters()} == {torch.bfloat16}
    assert sum(p.numel() for p in got.parameters()) < sum(p.numel() for p in m.parameters())
    with torch.no_grad():
        assert torch.isfinite(got(X).logits.float()).all()


def test_stream_cli_names_a_bad_calibration_file(sharded, tmp_path, capsys):
    from tuneless.llm.stream import main

    _, src = sharded
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    torch.save({"ids": CALIB}, tmp_path / "dict.pt")
    for name, want in (("junk.pt", "not a saved tensor"), ("dict.pt", "holds a dict")):
        assert main([str(src), str(tmp_path / "out"), "--repair", "refit", "--calib-ids",
                     str(tmp_path / name)]) == 1
        assert want in capsys.readouterr().out
    assert main([str(src), str(tmp_path / "out"), "--steps", "0"]) == 1
    assert "steps must be a positive integer" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_stepped_streamed_fold_equals_the_stepped_in_memory_fold(sharded, tmp_path):
    """steps=2 streamed: the first step's per-layer checkpoint (a temporary folder beside the
    output, removed after) is folded again, sampling its own text; equal to fold_llm's
    steps=2, and the output loads as a plain uniform checkpoint when the sizes are uniform."""
    m, src = sharded
    opts = dict(calib_samples=4, calib_len=12, steps=2)  # paper-mlp: 48 → 33, 29 channels
    out = fold_checkpoint(src, tmp_path / "dst", 0.1, kmeans_dim=None, progress=False,
                          schedule="paper-mlp", **opts)
    want = fold_llm(m, sparsity=0.1, schedule="paper-mlp", **opts)
    one = fold_llm(m, sparsity=0.1, schedule="paper-mlp", calib_samples=4, calib_len=12,
                   steps=1)
    got = load_folded(out)
    with torch.no_grad():
        diff = (got(X).logits - want(X).logits).abs().max()
        assert diff < 1e-4
        assert (one(X).logits - want(X).logits).abs().max() > 100 * diff
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no step left over
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tuneless_layer_sizes"] == [[4, 2, 48], [4, 2, 33], [4, 2, 29]]
    uniform = fold_checkpoint(src, tmp_path / "uni", 0.25, schedule="uniform", progress=False,
                              kmeans_dim=None, **opts)  # heads only: one step, plain config
    cfg = json.loads((uniform / "config.json").read_text())
    assert "tuneless_layer_sizes" not in cfg and "auto_map" not in cfg
    with pytest.raises(TunelessError, match="steps must be a positive integer"):
        fold_checkpoint(src, tmp_path / "bad", 0.25, steps=0, progress=False)


@pytest.mark.parametrize("guard", ["holds", "fails"])
def test_streamed_default_chooses_the_schedule_as_in_memory(tmp_path, monkeypatch, guard):
    """The default schedule is chosen by the folds' perplexity on held-out self-sampled
    rows (tuneless.llm.choose) in both paths, with the same choice and the same model;
    "fails": every fold fails the guard, so both schedules are folded and compared."""
    import tuneless.llm.choose as choose_module

    if guard == "fails":  # one rule for both paths (tuneless.llm.choose.choose)
        monkeypatch.setattr(choose_module, "guard_failed", lambda ratio: True)
    m = tiny_llama(layers=6, mlp=48)
    m.save_pretrained(tmp_path / "src", max_shard_size="60KB")
    opts = dict(calib_samples=4, calib_len=10, steps=1)
    out = fold_checkpoint(tmp_path / "src", tmp_path / "dst", 0.1, progress=False, **opts)
    want = fold_llm(m, sparsity=0.1, **opts)  # the same defaults, k-means' included
    choice = json.loads((out / "config.json").read_text())["tuneless_schedule_choice"]
    assert choice["kept"] == want.tuneless_report["schedule_choice"]["kept"]
    assert set(choice["own_text_ratio"]) == ({"inner-mlp", "paper-mlp"} if guard == "fails"
                                             else {"inner-mlp"})
    for k, r in choice["own_text_ratio"].items():
        assert r == pytest.approx(want.tuneless_report["schedule_choice"]["own_text_ratio"][k],
                                  rel=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(load_folded(out)(X).logits, want(X).logits, rtol=1e-4,
                                   atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no work folders


@pytest.mark.parametrize("kwargs", [
    dict(head_ratio=0.5, mlp_ratio=0.5, repair="refit",
         data=torch.randint(0, 90, (4, 16), generator=torch.Generator().manual_seed(1))),
    dict(sparsity=0.2, calib_samples=4, calib_len=16),  # the defaults: flat-mlp, self repair
])
def test_streamed_obs_equals_the_in_memory_obs(sharded, tmp_path, kwargs):
    """The same units kept (the second moments measured on the original stream as it
    streams by) and the same repair, one layer in memory."""
    from tuneless.llm import obs_checkpoint, obs_prune_llm

    m, src = sharded
    out = obs_checkpoint(src, tmp_path / "dst", progress=False, **kwargs)
    want = obs_prune_llm(m, **kwargs)
    got = load_folded(out)
    assert check_checkpoint(out) == sum(p.numel() for p in got.parameters())
    with torch.no_grad():
        assert torch.equal(got(X).logits, want(X).logits)


def test_streamed_obs_names_what_it_cannot_do(sharded, tmp_path):
    from tuneless.llm import obs_checkpoint

    _, src = sharded
    with pytest.raises(TunelessError, match="repairs with 'self' or 'refit'"):
        obs_checkpoint(src, tmp_path / "dst", 0.2, repair="none")
    with pytest.raises(TunelessError, match="already exists"):
        obs_checkpoint(src, src, 0.2)


def test_streamed_named_schedules_plan_as_in_memory(tmp_path):
    """The streamed fold plans through the in-memory fold's checked_plans: a named schedule
    on a family whose heads cannot fold (GPT-NeoX) keeps the heads, as in memory (it folded
    them before), and sizes the family refuses are refused before any work."""
    from tests.llm.test_adapter_contract import _config

    cfg, cls = _config("gpt_neox", layers=3)
    torch.manual_seed(0)
    m = cls(cfg).eval()
    m.save_pretrained(tmp_path / "src")
    calib = torch.randint(0, 90, (4, 16), generator=torch.Generator().manual_seed(1))
    out = fold_checkpoint(tmp_path / "src", tmp_path / "dst", 0.2, schedule="uniform",
                          kmeans_dim=None, repair="refit", data=calib, progress=False)
    want = fold_llm(m, sparsity=0.2, schedule="uniform", repair="refit", data=calib)
    with torch.no_grad():
        assert torch.equal(load_folded(out)(calib[:2]).logits, want(calib[:2]).logits)
    with pytest.raises(TunelessError, match="heads cannot be folded"):
        fold_checkpoint(tmp_path / "src", tmp_path / "bad", head_ratio=0.5, mlp_ratio=0.2,
                        repair="none", progress=False)
    assert not (tmp_path / "bad").exists()
