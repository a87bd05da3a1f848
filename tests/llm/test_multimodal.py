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


def test_the_command_line_folds_the_language_model_and_says_so(tmp_path, capsys):
    from tests.commands.test_compress_llm import IDS as CLI_IDS
    from tests.commands.test_compress_llm import _logits_without_tuneless
    from tuneless.cli import main
    from tuneless.llm import load_folded

    vlm = _vlm("gemma3")
    vlm.save_pretrained(tmp_path / "dense")
    out = tmp_path / "small"
    with pytest.warns(UserWarning, match="vision-language model .*vision tower"):
        assert main(["compress", str(tmp_path / "dense"), "--method", "fold", "--sparsity",
                     "0.1", "--option", "calib_samples=4", "--option", "calib_len=16", "-o",
                     str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text" and len(cfg["tuneless_layer_sizes"]) == 8
    assert not list(out.glob("tokenizer*"))  # none in the input: none made up
    with torch.no_grad():
        ours = load_folded(out)(input_ids=CLI_IDS).logits
    assert torch.equal(_logits_without_tuneless(out, tmp_path, trust=True), ours)
