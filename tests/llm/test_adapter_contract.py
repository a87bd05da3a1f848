"""The contract every decoder-family adapter passes, on a tiny random config of its family:
duplicated units fold losslessly, ratio 0 is the identity, save/load round-trips, and the
folded model generates. A new family is one `register_family` line plus an entry here."""

from __future__ import annotations

import pytest
import torch

from tuneless.errors import TunelessError, UnsupportedModelError
from tuneless.llm import fold_llm, load_folded, save_folded
from tuneless.llm.adapters import ADAPTERS, adapter_for
from tuneless.llm.conv1d import as_linear

IDS = torch.randint(0, 90, (2, 12), generator=torch.Generator().manual_seed(0))


def _alternating(layers: int) -> list[str]:
    return ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (
        layers % 2)


def _config(family: str, layers: int = 2):
    import transformers as tf

    common = dict(vocab_size=97, hidden_size=64, intermediate_size=32, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  bos_token_id=1, eos_token_id=2)
    if family == "llama":
        return tf.LlamaConfig(**common), tf.LlamaForCausalLM
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=None), tf.MistralForCausalLM
    if family == "qwen2":  # q/k/v biases
        return tf.Qwen2Config(**common, use_sliding_window=False), tf.Qwen2ForCausalLM
    if family == "qwen3":  # per-head q/k norms; head_dim set apart from hidden/heads
        return tf.Qwen3Config(**common, head_dim=8, use_sliding_window=False), \
            tf.Qwen3ForCausalLM
    if family == "gemma":  # GeGLU, (1 + w) norms
        return tf.GemmaConfig(**common, head_dim=16), tf.GemmaForCausalLM
    if family == "gemma2":  # sandwich norms, soft-capping, sliding windows
        return tf.Gemma2Config(**common, head_dim=24, sliding_window=8), tf.Gemma2ForCausalLM
    if family == "gemma3_text":  # sandwich norms, q/k norms, head_dim != hidden / heads
        return tf.Gemma3TextConfig(**common, head_dim=24, sliding_window=8), \
            tf.Gemma3ForCausalLM
    if family == "phi3":  # fused qkv_proj and gate_up_proj
        return tf.Phi3Config(**common, pad_token_id=0), tf.Phi3ForCausalLM
    if family == "smollm3":  # no rotary embedding in some layers
        return tf.SmolLM3Config(**common, pad_token_id=0, no_rope_layer_interval=2), \
            tf.SmolLM3ForCausalLM
    if family == "granite":  # multipliers everywhere; residual_multiplier scales each sublayer
        return tf.GraniteConfig(**common, residual_multiplier=0.5, embedding_multiplier=2.0,
                                attention_multiplier=0.3, logits_scaling=2.0), \
            tf.GraniteForCausalLM
    if family == "olmo":  # LayerNorm without weights, clipped q/k/v
        return tf.OlmoConfig(**common, clip_qkv=2.0, pad_token_id=0), tf.OlmoForCausalLM
    if family in ("olmo2", "olmo3"):  # norms on sublayer outputs only; q/k norms span heads
        cls = {"olmo2": (tf.Olmo2Config, tf.Olmo2ForCausalLM),
               "olmo3": (tf.Olmo3Config, tf.Olmo3ForCausalLM)}[family]
        return cls[0](**common, pad_token_id=0), cls[1]
    if family == "exaone4":  # output-only sublayer norms, per-head q/k norms
        return tf.Exaone4Config(**common, pad_token_id=0), tf.Exaone4ForCausalLM
    if family == "vaultgemma":  # Gemma's layout, the MLP norm named pre_feedforward
        return tf.VaultGemmaConfig(**common, head_dim=16, pad_token_id=0), \
            tf.VaultGemmaForCausalLM
    if family == "stablelm":  # LayerNorms with biases, partial rotary, heads fixed
        return tf.StableLmConfig(**common, use_qkv_bias=True, pad_token_id=0), \
            tf.StableLmForCausalLM
    if family == "helium":  # o_proj hidden × hidden whatever the head count: heads fixed
        return tf.HeliumConfig(**common, head_dim=16, pad_token_id=0), tf.HeliumForCausalLM
    if family == "granite_swa":  # Granite's multipliers, sliding windows in some layers
        return tf.GraniteSWAConfig(**common, residual_multiplier=0.5, embedding_multiplier=2.0,
                                   sliding_window=8, layer_types=_alternating(layers)), \
            tf.GraniteSWAForCausalLM
    if family == "hyperclovax":  # output norms on both sublayers and a residual multiplier
        return tf.HyperCLOVAXConfig(**common, head_dim=16, use_post_norm=True,
                                    residual_multiplier=0.5, pad_token_id=0), \
            tf.HyperCLOVAXForCausalLM
    if family in ("glm", "glm4"):  # one gate_up_proj; GLM-4 adds sandwich norms
        cls = {"glm": (tf.GlmConfig, tf.GlmForCausalLM),
               "glm4": (tf.Glm4Config, tf.Glm4ForCausalLM)}[family]
        return cls[0](**common, head_dim=16, attention_bias=True, pad_token_id=0), cls[1]
    if family == "ministral":  # Mistral's layout, sliding windows per layer type
        return tf.MinistralConfig(**common, head_dim=16, sliding_window=8, pad_token_id=0,
                                  layer_types=_alternating(layers)), \
            tf.MinistralForCausalLM
    if family == "phi":  # parallel attention and MLP, fc1/fc2, partial rotary, biases
        return tf.PhiConfig(**common, pad_token_id=0), tf.PhiForCausalLM
    if family in ("cohere", "cohere2"):  # parallel, gated, LayerNorm without bias
        cls = {"cohere": (tf.CohereConfig, tf.CohereForCausalLM),
               "cohere2": (tf.Cohere2Config, tf.Cohere2ForCausalLM)}[family]
        extra = {"sliding_window": 8, "layer_types": _alternating(layers)} \
            if family == "cohere2" else {}
        return cls[0](**common, pad_token_id=0, **extra), cls[1]
    if family == "gptj":  # parallel, transformer.h, fc_in/fc_out, n_inner (4 × hidden as in GPT-J)
        return tf.GPTJConfig(vocab_size=97, n_positions=64, n_embd=64, n_layer=layers,
                             n_head=4, rotary_dim=8, n_inner=256, bos_token_id=1,
                             eos_token_id=2), tf.GPTJForCausalLM
    if family == "opt":  # fc1/fc2 on the decoder layer itself, biases, the width in ffn_dim
        return tf.OPTConfig(vocab_size=97, hidden_size=64, ffn_dim=256, num_hidden_layers=layers,
                            num_attention_heads=4, max_position_embeddings=64,
                            word_embed_proj_dim=64, bos_token_id=1, eos_token_id=2,
                            pad_token_id=0), tf.OPTForCausalLM
    if family == "gpt2":  # Conv1D projections, fused c_attn, the mask passed positionally
        return tf.GPT2Config(vocab_size=97, n_positions=64, n_embd=64, n_layer=layers, n_head=4,
                             n_inner=256, bos_token_id=1, eos_token_id=2), tf.GPT2LMHeadModel
    if family == "gpt_neox":  # Pythia: interleaved fused qkv, parallel, embed_out
        return tf.GPTNeoXConfig(vocab_size=97, hidden_size=64, intermediate_size=256,
                                num_hidden_layers=layers, num_attention_heads=4,
                                max_position_embeddings=64, rotary_pct=0.25, bos_token_id=1,
                                eos_token_id=2), tf.GPTNeoXForCausalLM
    plain = {"ernie4_5": (tf.Ernie4_5Config, tf.Ernie4_5ForCausalLM),
             "seed_oss": (tf.SeedOssConfig, tf.SeedOssForCausalLM),
             "ministral3": (tf.Ministral3Config, tf.Ministral3ForCausalLM),
             "internlm3": (tf.InternLM3Config, tf.LlamaForCausalLM),
             "iquestcoder": (tf.IQuestCoderConfig, tf.LlamaForCausalLM),
             "hunyuan_v1_dense": (tf.HunYuanDenseV1Config, tf.HunYuanDenseV1ForCausalLM),
             # MLPs without a gate
             "arcee": (tf.ArceeConfig, tf.ArceeForCausalLM),
             "nemotron": (tf.NemotronConfig, tf.NemotronForCausalLM),
             "jais2": (tf.Jais2Config, tf.Jais2ForCausalLM),
             "nanochat": (tf.NanoChatConfig, tf.NanoChatForCausalLM),
             "apertus": (tf.ApertusConfig, tf.ApertusForCausalLM),
             "starcoder2": (tf.Starcoder2Config, tf.Starcoder2ForCausalLM)}
    if family in plain:  # LLaMA's layout under another name
        cfg_cls, model_cls = plain[family]
        return cfg_cls(**common, pad_token_id=0, head_dim=16), model_cls
    raise AssertionError(family)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3",
            "smollm3", "granite", "olmo", "olmo2", "olmo3", "exaone4", "vaultgemma", "ernie4_5",
            "seed_oss", "ministral3", "stablelm", "helium", "ministral", "internlm3",
            "iquestcoder", "granite_swa", "hunyuan_v1_dense", "hyperclovax", "glm", "glm4",
            "arcee", "nemotron", "jais2", "nanochat", "apertus", "starcoder2", "phi", "cohere",
            "cohere2", "gptj", "gpt_neox", "opt", "gpt2"]


def _model(family: str, seed: int = 0):
    cfg, cls = _config(family)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # random biases, so that folding them is exercised
        for p in model.parameters():
            if p.dim() == 1 and not torch.all(p == 1):
                p.normal_(0, 0.1)
    return model


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _duplicate(model, what: str) -> None:
    """Make the second half of the MLP channels ("mlp") or of the kv groups ("heads") exact
    copies of the first half, in every layer, through the adapter's own groups."""
    as_linear(model, inplace=True)  # GPT-2's Conv1D: rows are the slots' axis 0 as Linears
    adapter = adapter_for(model)
    with torch.no_grad():
        for i, shape in enumerate(adapter.shapes(model)):
            lg = adapter.layer_groups(i, shape, "kv-groups")
            group = lg.mlp if what == "mlp" else lg.heads[0]
            half = group.n // 2
            for s in group.slots:
                t = s.tensor(model)
                start, span = s.offset * s.block, half * s.block  # fused: slots at offsets
                t.narrow(s.axis, start + span, span).copy_(t.narrow(s.axis, start, span))
                if s.kind == "consumer":  # consumer columns are summed when merged: halve
                    t.narrow(s.axis, start, 2 * span).mul_(0.5)


def test_every_registered_family_is_in_the_contract():
    assert {m for m in ADAPTERS if m != "smollm"} == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_duplicated_mlp_channels_fold_losslessly(family):
    model = _model(family)
    _duplicate(model, "mlp")
    small = fold_llm(model, head_ratio=0.0, mlp_ratio=0.5, repair="none")
    adapter = adapter_for(small)
    assert getattr(small.config, adapter.mlp_field) == adapter.mlp_width(model.config) // 2
    assert torch.allclose(_logits(small), _logits(model), atol=1e-4)


# head_dim = hidden / heads and o_proj hidden × hidden: heads stay fixed
FIXED_HEADS = ("stablelm", "helium", "gptj", "gpt_neox", "opt", "gpt2")


@pytest.mark.parametrize("family", FAMILIES)
def test_duplicated_kv_groups_fold_losslessly(family):
    model = _model(family)
    if family in FIXED_HEADS:  # refused by name, before any work
        with pytest.raises(TunelessError, match="heads cannot be folded"):
            fold_llm(model, head_ratio=0.5, mlp_ratio=0.0, repair="none")
        return
    _duplicate(model, "heads")
    small = fold_llm(model, head_ratio=0.5, mlp_ratio=0.0, repair="none")
    assert small.config.num_key_value_heads == 1 and small.config.num_attention_heads == 2
    assert torch.allclose(_logits(small), _logits(model), atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_lossless_fold_stays_lossless_through_the_refit(family):
    """Duplicated channels fold exactly, so the refit's target is what the folded consumers
    already write: a refit that aims anywhere else (a missed residual multiplier, a wrong
    norm inversion) moves the logits."""
    model = _model(family)
    _duplicate(model, "mlp")
    calib = torch.randint(0, 90, (4, 16), generator=torch.Generator().manual_seed(1))
    small = fold_llm(model, head_ratio=0.0, mlp_ratio=0.5, repair="refit", data=calib)
    assert torch.allclose(_logits(small), _logits(model), atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_planner_counts_each_layers_projections_exactly(family):
    """The schedules spend the budget by Shape.params: a miscount (a gate the family does
    not have, a bias) folds to a sparsity other than the one asked for."""
    model = _model(family)
    adapter = adapter_for(model)
    for layer, shape in zip(adapter.layers(model), adapter.shapes(model)):
        modules = {id(m): m for m in adapter.projections(layer).values()}.values()
        weights = sum(p.numel() for m in modules for p in m.parameters())
        assert shape.params() - shape.n_norm * shape.hidden == weights


@pytest.mark.parametrize("family", FAMILIES)
def test_ratio_zero_is_the_identity(family):
    model = _model(family)
    same = fold_llm(model, head_ratio=0.0, mlp_ratio=0.0, repair="none")
    assert same is not model
    assert torch.equal(_logits(same), _logits(model))


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_and_generation(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _model(family)
    small = fold_llm(model, sparsity=0.3)  # the defaults: schedule, self repair
    out = save_folded(small, tmp_path / "small")
    again = load_folded(out)
    per_layer = getattr(small.config, "tuneless_layer_sizes", None) is not None
    # uniform sizes: plain transformers; per-layer: the modeling file shipped beside them
    plain = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=per_layer)
    assert torch.equal(_logits(again), _logits(small))
    assert torch.equal(_logits(plain.eval()), _logits(small))
    gen = again.generate(IDS[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 9)


def test_a_causal_lm_without_an_adapter_is_named_with_the_supported_families():
    from transformers import BloomConfig, BloomForCausalLM

    import tuneless

    bloom = BloomForCausalLM(BloomConfig(vocab_size=97, hidden_size=32, n_layer=1,
                                         n_head=2)).eval()
    for call in (lambda: tuneless.fold(bloom, sparsity=0.2),
                 lambda: tuneless.prune(bloom, sparsity=0.2, criterion="magnitude"),
                 lambda: tuneless.svd(bloom, sparsity=0.2)):
        with pytest.raises(UnsupportedModelError,
                           match=r"'bloom'.*gpt2.*llama.*mistral.*phi3.*qwen2"):
            call()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_bfloat16_model_folds_and_stays_bfloat16(family):
    model = _model(family).to(torch.bfloat16)
    small = fold_llm(model, sparsity=0.3, calib_samples=4, calib_len=16)  # defaults + repair
    assert {p.dtype for p in small.parameters()} == {torch.bfloat16}
    assert small.config.intermediate_size < 32 or small.config.num_key_value_heads < 2
    assert torch.isfinite(_logits(small).float()).all()


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3_text", "granite", "phi",
                                    "cohere"])
def test_the_least_squares_repair_pulls_the_stream_back(family):
    model = _model(family)
    calib = torch.randint(0, 90, (8, 24), generator=torch.Generator().manual_seed(3))

    def final_hidden(m):
        with torch.no_grad():
            return m(input_ids=calib, output_hidden_states=True).hidden_states[-1]

    plain = fold_llm(model, head_ratio=0.5, mlp_ratio=0.5, repair="none")
    fixed = fold_llm(model, head_ratio=0.5, mlp_ratio=0.5, repair="refit", data=calib)
    ref = final_hidden(model)
    err_plain = (final_hidden(plain) - ref).pow(2).mean()
    err_fixed = (final_hidden(fixed) - ref).pow(2).mean()
    assert err_fixed < 0.75 * err_plain


@pytest.mark.parametrize("family", ["phi3", "olmo2"])
def test_per_layer_head_counts_are_refused_by_name_where_heads_are_global(family):
    cfg, cls = _config(family, layers=8)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with pytest.raises(TunelessError, match="head counts must be the same in every layer"):
        fold_llm(model, sparsity=0.2, schedule="paper", repair="none")


@pytest.mark.parametrize("family", FIXED_HEADS)
def test_schedules_that_fold_heads_keep_them_where_heads_cannot_fold(family):
    """The baselines' uniform schedule and an explicit "uniform" fold take head_ratio=0 in
    these families instead of refusing their own default."""
    import tuneless

    model = _model(family)
    for small in (tuneless.prune(model, sparsity=0.1, criterion="magnitude"),
                  fold_llm(model, sparsity=0.1, schedule="uniform", repair="none")):
        before, after = adapter_for(model).shapes(model), adapter_for(small).shapes(small)
        assert [(s.n_q, s.n_kv) for s in after] == [(s.n_q, s.n_kv) for s in before]
        assert sum(s.n_mlp for s in after) < sum(s.n_mlp for s in before)


def test_stablelm_with_parallel_attention_and_mlp_folds_and_refits_losslessly():
    """use_parallel_residual: both sublayers read the layer input; a refit of a lossless
    fold must aim at exactly what the folded down_proj already writes."""
    cfg, cls = _config("stablelm")
    cfg.use_parallel_residual = True
    torch.manual_seed(0)
    model = cls(cfg).eval()
    assert adapter_for(model).is_parallel(model.model.layers[0])
    _duplicate(model, "mlp")
    calib = torch.randint(0, 90, (4, 16), generator=torch.Generator().manual_seed(1))
    small = fold_llm(model, head_ratio=0.0, mlp_ratio=0.5, repair="refit", data=calib)
    assert torch.allclose(_logits(small), _logits(model), atol=1e-3)


@pytest.mark.parametrize("family, flag, value", [("phi", "qk_layernorm", True),
                                                ("cohere", "use_qk_norm", True),
                                                ("opt", "do_layer_norm_before", False)])
def test_layouts_the_repair_cannot_aim_through_are_refused_by_name(family, flag, value):
    cfg, cls = _config(family)
    setattr(cfg, flag, value)
    torch.manual_seed(0)
    with pytest.raises(UnsupportedModelError, match=flag):
        fold_llm(cls(cfg).eval(), sparsity=0.2, repair="none")


def test_olmo2_q_k_norm_gains_fold_with_their_heads():
    """OLMo 2's q/k RMSNorms span all heads, with a gain per row: kv group 1 written by hand
    as a copy of kv group 0 (rows, o columns and both norms' gains, all random) folds
    losslessly only if the gains are merged with their own rows."""
    model = _model("olmo2")
    hd, q_half, kv_half = 16, 2 * 16, 16  # 4 query heads, 2 kv heads, head_dim 16
    with torch.no_grad():
        for layer in model.model.layers:
            a = layer.self_attn
            a.q_norm.weight.uniform_(0.5, 1.5)
            a.k_norm.weight.uniform_(0.5, 1.5)
            for t, half in ((a.q_proj.weight, q_half), (a.q_norm.weight, q_half),
                            (a.k_proj.weight, kv_half), (a.k_norm.weight, kv_half),
                            (a.v_proj.weight, kv_half)):
                t[half:] = t[:half]
            a.o_proj.weight[:, q_half:] = a.o_proj.weight[:, :q_half]
            a.o_proj.weight.mul_(0.5)
    assert hd * 4 == model.config.hidden_size
    small = fold_llm(model, head_ratio=0.5, mlp_ratio=0.0, repair="none")
    assert small.model.layers[0].self_attn.q_norm.weight.shape == (q_half,)
    assert torch.allclose(_logits(small), _logits(model), atol=1e-4)


def test_layer_inputs_runs_no_layer_and_leaves_the_model_as_it_was():
    """Recording the layers' inputs costs the embeddings only (no layer computes), and the
    layers' own forward (an instance attribute too, as accelerate sets one) comes back."""
    from tuneless.llm.refit import layer_inputs

    cfg, cls = _config("llama", layers=3)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    layers = adapter_for(model).layers(model)
    wrapped = layers[1].forward
    layers[1].forward = wrapped  # an instance-level forward, like accelerate's hooks
    with torch.no_grad():
        before = model(input_ids=IDS).logits
        calls = []
        handles = [layer.mlp.register_forward_hook(lambda *_: calls.append(1))
                   for layer in layers]
        layer_inputs(model, IDS)
        for h in handles:
            h.remove()
        assert calls == []
        assert "forward" not in layers[0].__dict__ and layers[1].__dict__["forward"] is wrapped
        assert torch.equal(model(input_ids=IDS).logits, before)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_inputs_replay_every_layer_exactly(family):
    """The refit replays decoder layers one at a time; each must see its own mask and rotary
    table (Gemma 2/3 alternate sliding and full attention: a window shorter than IDS)."""
    from tuneless.llm.refit import layer_inputs

    cfg, cls = _config(family, layers=4)
    if family == "gemma3_text":
        cfg.layer_types = ["sliding_attention", "full_attention"] * 2
    torch.manual_seed(0)
    model = cls(cfg).eval()
    layers = adapter_for(model).layers(model)
    outs = []
    handles = [layer.register_forward_hook(
        lambda _m, _a, out: outs.append(out[0] if isinstance(out, tuple) else out))
        for layer in layers]
    with torch.no_grad():
        model(input_ids=IDS, use_cache=False)
        for h in handles:
            h.remove()
        hidden, per_layer = layer_inputs(model, IDS)
        assert len(per_layer) == len(layers)
        for layer, kwargs, want in zip(layers, per_layer, outs):
            hidden = layer(hidden, **kwargs)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            torch.testing.assert_close(hidden, want, rtol=0, atol=0)
