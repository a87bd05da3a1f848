"""Vision-language checkpoints whose language model is a supported decoder (Gemma 3 from 4B
up, Mistral 3, LLaVA on LLaMA): the language model is folded on its own, then put back.

Their config is the wrapper's (model_type "gemma3", "mistral3", "llava") with the decoder's
in `text_config`, and their weights hold a vision tower beside the decoder. `text_model`
takes the decoder and its lm_head out as a plain causal LM of the text family
(Gemma3ForCausalLM, MistralForCausalLM, ...), which every tuneless path handles; saving with
`wrapper=` puts the folded decoder back into a copy of the vision-language model, so the
output keeps its vision tower (unchanged) and loads as the original class did.
"""

from __future__ import annotations

import copy
import warnings
import weakref
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
    with torch.device("meta"):  # no second copy of the weights: they are assigned below
        out = AutoModelForCausalLM.from_config(text_cfg, dtype=dtype)
    state = {f"model.{k}": v for k, v in decoder.state_dict().items()}
    state["lm_head.weight"] = head.weight
    missing, unexpected = out.load_state_dict(state, strict=False, assign=True)
    for name, buf in decoder.named_buffers():  # those outside the state dict (rotary tables)
        owner, _, leaf = f"model.{name}".rpartition(".")
        buffers = out.get_submodule(owner)._buffers
        if buffers.get(leaf) is not None and buffers[leaf].is_meta:
            buffers[leaf] = buf
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


_WRAPPERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def wrapper_of(model: nn.Module) -> nn.Module | None:
    """The vision-language model that `load_text_model` took `model` out of, else None."""
    return _WRAPPERS.get(model)


def load_text_model(folder: Path, config, dtype, trust_code: bool) -> nn.Module:
    """The language model of the vision-language checkpoint in `folder` (remembered with its
    wrapper: wrapper_of), with a warning that says what happens to the rest. (A folded one's
    is read by tuneless.llm.save.load_folded.)"""
    from transformers import AutoModelForImageTextToText

    try:
        full = AutoModelForImageTextToText.from_pretrained(
            str(folder), dtype=dtype or "auto", trust_remote_code=trust_code)
    except (OSError, ValueError, KeyError) as exc:
        raise TunelessError(f"cannot load the model in {folder}: {first_line(exc)}") from exc
    small = text_model(full)
    full.tuneless_source = Path(folder)  # where its processor files are (processor_files)
    _WRAPPERS[small] = full
    warnings.warn(f"{folder} is a vision-language model ({config.model_type}); tuneless "
                  f"compresses its language model ({type(small).__name__}) and `tuneless "
                  "compress` writes it back beside the unchanged vision tower", stacklevel=3)
    return small


PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json",
                   "video_preprocessor_config.json", "chat_template.json", "chat_template.jinja")


def processor_files(wrapper: nn.Module) -> list[Path]:
    """The image processor's and chat template's files beside the checkpoint `wrapper` was
    loaded from: a vision-language model needs them to take images."""
    source = getattr(wrapper, "tuneless_source", None)
    return [] if source is None else [source / f for f in PROCESSOR_FILES
                                      if (source / f).is_file()]


def rewrapped(model: nn.Module, wrapper: nn.Module) -> nn.Module:
    """A copy of the vision-language model `wrapper` whose language model and lm_head are
    those of the causal LM `model` (tensors shared; `wrapper` is left as it was)."""
    decoder = getattr(getattr(wrapper, "model", None), "language_model", None)
    if decoder is None or not hasattr(wrapper, "lm_head") or not hasattr(model, "model"):
        raise TunelessError(f"{type(wrapper).__name__} has no language model to put "
                            f"{type(model).__name__} into")
    whole, inner = copy.copy(wrapper), copy.copy(wrapper.model)
    whole._modules, inner._modules = dict(wrapper._modules), dict(wrapper.model._modules)
    inner.language_model = model.model
    whole.model, whole.lm_head = inner, model.lm_head
    whole.config = copy.deepcopy(wrapper.config)
    whole.config.text_config = copy.deepcopy(model.config)
    inner.config = whole.config
    return whole
