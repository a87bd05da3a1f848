"""Vision-language checkpoints (Gemma 3 from 4B up, Mistral 3, LLaVA): their language model is
taken out as the text family's causal LM with identical logits, the command line folds it
and says what it leaves out, and the API names the way to do the same."""

from __future__ import annotations

import json

import pytest
import torch

from tuneless.errors import TunelessError, UnsupportedModelError
from tuneless.llm import text_model

IDS = torch.randint(0, 90, (2, 12), generator=torch.Generator().manual_seed(0))
TEXT = dict(vocab_size=97, hidden_size=64, intermediate_size=48, num_hidden_layers=8,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            bos_token_id=1, eos_token_id=2)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              image_size=28, patch_size=14)


def _vlm(kind: str):
    import transformers as tf

    if kind == "gemma3":
        cfg = tf.Gemma3Config(text_config=dict(TEXT, head_dim=16), vision_config=VISION,
                              mm_tokens_per_image=4, image_token_index=96,
                              boi_token_index=94, eoi_token_index=95)
    elif kind == "llava":
        cfg = tf.LlavaConfig(text_config=tf.LlamaConfig(**TEXT),
                             vision_config=tf.CLIPVisionConfig(**VISION), image_token_index=96)
    else:
        cfg = tf.Mistral3Config(text_config=tf.MistralConfig(**TEXT), image_token_index=96,
                                vision_config=tf.PixtralVisionConfig(**VISION, head_dim=16))
    torch.manual_seed(0)
    return tf.AutoModelForImageTextToText.from_config(cfg).eval()


@pytest.mark.parametrize("kind,family", [("gemma3", "Gemma3ForCausalLM"),
                                         ("llava", "LlamaForCausalLM"),
                                         ("mistral3", "MistralForCausalLM")])
def test_the_language_model_comes_out_with_identical_logits(kind, family):
    vlm = _vlm(kind)
    text = text_model(vlm)
    assert type(text).__name__ == family
    with torch.no_grad():
        assert torch.equal(text(input_ids=IDS).logits, vlm(input_ids=IDS).logits)


def test_folding_a_vision_language_model_names_the_way_out():
    import tuneless

    with pytest.raises(UnsupportedModelError, match=r"vision-language model.*text_model"):
        tuneless.fold(_vlm("gemma3"), sparsity=0.2)


def test_text_model_refuses_a_plain_causal_lm():
    from tests.llm.conftest import tiny_llama

    with pytest.raises(TunelessError, match="not a vision-language model"):
        text_model(tiny_llama())


LOAD_VLM_WITHOUT_TUNELESS = r"""
import sys
sys.modules["tuneless"] = None  # any `import tuneless` now fails
import torch
from transformers import AutoModelForImageTextToText
folder, out, trust, gemma = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=trust).eval()
ids = torch.arange(3, 15).view(1, 12)
image = torch.tensor([[1, 94] + [96] * 4 + [95, 7, 8]])  # begin, 4 image tokens, end, text
with torch.no_grad():
    text = model(input_ids=ids).logits
    seen = model(input_ids=image, pixel_values=torch.randn(1, 3, 28, 28)).logits if gemma else text
torch.save({"text": text, "image_ok": bool(seen.isfinite().all()), "class": type(model).__name__,
            "mlp": [l.mlp.down_proj.in_features for l in model.model.language_model.layers]}, out)
"""


def _load_without_tuneless(folder, tmp_path, trust: bool, gemma: bool = True) -> dict:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", LOAD_VLM_WITHOUT_TUNELESS, str(folder),
                    str(tmp_path / "vlm.pt"), "1" if trust else "0", "1" if gemma else "0"],
                   check=True,
                   capture_output=True, cwd=tmp_path)
    return torch.load(tmp_path / "vlm.pt")


@pytest.mark.parametrize("kind", ["gemma3", "llava", "mistral3"])
def test_the_command_line_writes_the_vision_language_model_back_smaller(kind, tmp_path,
                                                                       capsys, monkeypatch):
    """The default fold (per-layer sizes) of a vision-language model: the folder is that
    vision-language model again, plain transformers loads it with the shipped file (no
    tuneless), its text logits are those tuneless reads, and (Gemma 3) images still go in.
    LLaVA's untied lm_head is what the key layout decides. --stream auto keeps such a
    model in memory even past its size share (the streamed fold reads decoders only)."""
    from tuneless.cli import main
    from tuneless.commands import compress_llm
    from tuneless.llm import load_folded

    monkeypatch.setattr(compress_llm, "STREAM_SHARE_OF_MEMORY", 0.0)

    _vlm(kind).save_pretrained(tmp_path / "dense")
    (tmp_path / "dense" / "preprocessor_config.json").write_text('{"do_resize": true}\n')
    out = tmp_path / "small"
    with pytest.warns(UserWarning, match="vision-language model .*vision tower"):
        assert main(["--quiet", "compress", str(tmp_path / "dense"), "--method", "fold",
                     "--sparsity", "0.1", "--option", "calib_samples=4", "--option",
                     "calib_len=16", "-o", str(out)]) == 0
    assert "AutoModelForImageTextToText.from_pretrained" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    sizes = cfg["text_config"]["tuneless_layer_sizes"]
    assert cfg["model_type"] == kind and len({tuple(s) for s in sizes}) > 1
    assert not list(out.glob("tokenizer*"))  # none in the input: none made up
    assert (out / "preprocessor_config.json").read_text() == '{"do_resize": true}\n'
    plain = _load_without_tuneless(out, tmp_path, trust=True, gemma=kind == "gemma3")
    assert plain["mlp"] == [n_mlp for _, _, n_mlp in sizes] and plain["image_ok"]
    with pytest.warns(UserWarning, match="folded vision-language model"):
        ours = load_folded(out)
    with torch.no_grad():
        assert torch.equal(ours(input_ids=torch.arange(3, 15).view(1, 12)).logits,
                           plain["text"])


def test_a_uniform_fold_loads_with_plain_from_pretrained_and_leaves_the_input_alone(tmp_path):
    from tuneless.llm import fold_llm, save_folded

    vlm = _vlm("gemma3")
    before = {k: v.clone() for k, v in vlm.state_dict().items()}
    small = fold_llm(text_model(vlm), mlp_ratio=0.5, head_ratio=0.0, repair="none")
    save_folded(small, tmp_path / "small", wrapper=vlm)
    assert all(torch.equal(v, before[k]) for k, v in vlm.state_dict().items())
    assert vlm.model.language_model.layers[0].mlp.down_proj.in_features == 48
    plain = _load_without_tuneless(tmp_path / "small", tmp_path, trust=False)
    assert plain["class"] == "Gemma3ForConditionalGeneration" and plain["mlp"] == [24] * 8
    with torch.no_grad():
        assert torch.equal(small(input_ids=torch.arange(3, 15).view(1, 12)).logits,
                           plain["text"])
