"""Save and load folded LLMs, including ones whose layers have different sizes.

A uniformly folded model is an ordinary Hugging Face model: the standard config
fields carry its sizes, so `save_pretrained` + plain `from_pretrained` work.
Plain transformers cannot load per-layer sizes: LlamaConfig has one
num_attention_heads / num_key_value_heads / intermediate_size for all layers and
`from_pretrained` builds every layer from them, so the saved tensors would not fit.
For such models the config also stores `tuneless_layer_sizes` ([n_q, n_kv, n_mlp]
per layer) and load_folded rebuilds each layer at its size before loading weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from tuneless.errors import TunelessError
from tuneless.io_atomic import exit_on_signals
from tuneless.llm.adapters import adapter_for, adapter_for_config


def save_folded(model: nn.Module, folder: str | os.PathLike, tokenizer=None) -> Path:
    """save_pretrained into a new folder, atomically (never over an existing folder)."""
    adapter_for(model)
    folder = Path(folder)
    if folder.exists():
        raise TunelessError(f"{folder} already exists; choose a new output folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    with exit_on_signals():  # SIGTERM/SIGHUP still remove the half-written folder
        try:
            model.save_pretrained(str(tmp))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def _resize(model: nn.Module, sizes: list[list[int]]) -> None:
    """Rebuild every layer's seven projections at its saved sizes (weights loaded after)."""
    adapter = adapter_for(model)
    hd = adapter.head_dim(model.config)
    layers = adapter.layers(model)
    if len(sizes) != len(layers):
        raise TunelessError(
            f"tuneless_layer_sizes has {len(sizes)} entries for {len(layers)} layers"
        )
    for layer, (n_q, n_kv, n_mlp) in zip(layers, sizes):
        p = adapter.projections(layer)
        hidden = p["q"].in_features
        out = {"q": n_q * hd, "k": n_kv * hd, "v": n_kv * hd, "o": hidden, "gate": n_mlp,
               "up": n_mlp, "down": hidden}
        inp = {**dict.fromkeys(out, hidden), "o": n_q * hd, "down": n_mlp}
        for short, lin in p.items():
            parent = getattr(layer, adapter.mlp if short in ("gate", "up", "down")
                             else adapter.attn)
            setattr(parent, getattr(adapter, short), nn.Linear(
                inp[short], out[short], bias=lin.bias is not None, dtype=lin.weight.dtype))
    adapter.finalize(model)


def load_folded(folder: str | os.PathLike, dtype: torch.dtype | None = None,
                trust_code: bool = False) -> nn.Module:
    """Load a model saved by save_folded (or any HF causal-LM folder).

    Python code shipped in the folder (a config's `auto_map`) runs only with
    trust_code=True, which is passed on to transformers as `trust_remote_code`.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise TunelessError(f"{folder} has no config.json; not a saved model folder")
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_code)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise TunelessError(f"cannot read {folder}/config.json: {exc}") from exc
        raise TunelessError(f"{folder} ships its own Python code (auto_map); load it with "
                            "trust_code=True (--trust-code) only if you trust it") from exc
    sizes = getattr(config, "tuneless_layer_sizes", None)
    if not sizes:
        return AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype or "auto", trust_remote_code=trust_code).eval()
    adapter_for_config(config)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or config.dtype or torch.float32)
    _resize(model, sizes)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if not state:
        raise TunelessError(f"no .safetensors weights in {folder}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k.startswith("lm_head."))]
    if missing or unexpected:
        raise TunelessError(
            f"weights in {folder} do not match the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
