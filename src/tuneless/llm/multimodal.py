"""Vision-language checkpoints whose language model is a supported decoder (Gemma 3 from 4B
up, Mistral 3, LLaVA on LLaMA): the language model is folded on its own.

Their config is the wrapper's (model_type "gemma3", "mistral3", "llava") with the decoder's
in `text_config`, and their weights hold a vision tower beside the decoder. tuneless takes
the decoder and its lm_head out as a plain causal LM of the text family (Gemma3ForCausalLM,
MistralForCausalLM, ...), which every tuneless path handles and plain transformers loads;
the vision tower and projector are not kept, and loading says so.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from tuneless.errors import TunelessError, first_line
from tuneless.llm.adapters import supported_text_config


def text_model(model: nn.Module) -> nn.Module:
    """The causal LM inside a loaded vision-language model: its decoder and lm_head, as the
    text family's own *ForCausalLM (new tensors' storage shared with `model`; same logits
    on text)."""
    from transformers import AutoModelForCausalLM

    config = getattr(model, "config", None)
    text_cfg = supported_text_config(config) if config is not None else None
    decoder = getattr(getattr(model, "model", None), "language_model", None)
    head = getattr(model, "lm_head", None)
    if text_cfg is None or decoder is None or head is None:
        raise TunelessError(f"{type(model).__name__} is not a vision-language model with a "
                            "supported language model (model.language_model and lm_head)")
    dtype = next(decoder.parameters()).dtype
    out = AutoModelForCausalLM.from_config(text_cfg, dtype=dtype)
    state = {f"model.{k}": v for k, v in decoder.state_dict().items()}
    state["lm_head.weight"] = head.weight
    missing, unexpected = out.load_state_dict(state, strict=False, assign=True)
    tied = getattr(text_cfg, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k.startswith("lm_head."))]
    if missing or unexpected:
        raise TunelessError(f"the language model of {type(model).__name__} does not fit "
                            f"{type(out).__name__}: missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}")
    if tied and not torch.equal(out.lm_head.weight, out.model.embed_tokens.weight):
        out.tie_weights()
    out.generation_config = getattr(model, "generation_config", out.generation_config)
    return out.to(next(model.parameters()).device).eval()


def load_text_model(folder: Path, config, dtype, trust_code: bool) -> nn.Module:
    """The language model of the vision-language checkpoint in `folder`, with a warning
    that names what is left out."""
    from transformers import AutoModelForImageTextToText

    try:
        full = AutoModelForImageTextToText.from_pretrained(
            str(folder), dtype=dtype or "auto", trust_remote_code=trust_code)
    except (OSError, ValueError, KeyError) as exc:
        raise TunelessError(f"cannot load the model in {folder}: {first_line(exc)}") from exc
    small = text_model(full)
    warnings.warn(f"{folder} is a vision-language model ({config.model_type}); tuneless loads "
                  f"its language model alone as {type(small).__name__} (the vision tower "
                  "and projector are not kept in what it writes)", stacklevel=3)
    return small
