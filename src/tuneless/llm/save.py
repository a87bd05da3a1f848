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
from pathlib import Path

import torch
from torch import nn

from tuneless.errors import TunelessError, first_line
from tuneless.io_atomic import atomic_folder
from tuneless.llm.adapters import adapter_for, adapter_for_config
from tuneless.llm.conv1d import as_linear, empty_like
from tuneless.llm.hf import model_keys, quiet_config_validation

MODELING = '''"""A decoder whose layers have different sizes (folded by tuneless).

Plain transformers, no tuneless needed: each decoder layer is rebuilt at the sizes in
config.tuneless_layer_sizes ([query heads, kv heads, MLP channels] per layer) before the
weights load. Load with AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).
"""

from torch import nn
from transformers import {base}


def _linear(old, n_in, n_out):
    w = old.weight
    if type(old).__name__ == "Conv1D":  # GPT-2: a linear layer storing its weight (in, out)
        from transformers.pytorch_utils import Conv1D

        return Conv1D(n_out, n_in).to(dtype=w.dtype, device=w.device)
    return nn.Linear(n_in, n_out, bias=old.bias is not None, dtype=w.dtype, device=w.device)


class FoldedForCausalLM({base}):
    def __init__(self, config):
        super().__init__(config)
        text = config.get_text_config()  # the config itself, or a vision-language model's
        h = text.hidden_size
        hd = getattr(text, "head_dim", None) or h // text.num_attention_heads
        for layer, (n_q, n_kv, n_mlp) in zip(self.{layers}, text.tuneless_layer_sizes):
            attn, mlp = layer.{attn}, {mlp}
{rebuild}
            attn.num_key_value_groups = n_q // n_kv
            if hasattr(attn, "num_key_value_heads"):
                attn.num_key_value_heads = n_kv
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = n_mlp
'''


def _hf_base(model: nn.Module) -> str:
    """The transformers class a model is (or derives from), importable from `transformers`."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers.models."):
            return cls.__name__
    raise TunelessError(f"{type(model).__name__} is not a transformers model class")


def write_modeling(a, base: str, folder: Path, layers: str | None = None) -> None:
    """Ship the loader of per-layer sizes with the weights (config auto_map points at it):
    `a` the family adapter, `base` the transformers class the folded model is, `layers` where
    its decoder layers are (the adapter's prefix; a vision-language model's is deeper, and
    its sizes are in its text_config)."""
    import json

    rebuild = "\n".join(f"            {parent}.{name} = _linear({parent}.{name}, {n_in}, {n_out})"
                        for parent, name, n_in, n_out in a.projection_specs())
    code = MODELING.format(base=base, layers=layers or a.layer_prefix, attn=a.attn,
                           mlp=f"layer.{a.mlp}" if a.mlp else "layer", rebuild=rebuild)
    (folder / "modeling_tuneless.py").write_text(code)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cls = "modeling_tuneless.FoldedForCausalLM"
    cfg["auto_map"] = {"AutoModelForCausalLM": cls}
    if "text_config" in cfg:
        cfg["auto_map"]["AutoModelForImageTextToText"] = cls
        cfg["text_config"].update(native_per_layer(cfg["text_config"]))
    else:
        cfg.update(native_per_layer(cfg))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def native_per_layer(cfg: dict) -> dict:
    """The per-layer sizes also in transformers' own `per_layer_config` (layer → overrides),
    for a loader that builds heterogeneous layers natively; global reads stay allowed so that
    today's classes (which build uniform layers, then the shipped file resizes them) load it.
    Skipped when a head count does not divide hidden_size: transformers validates each
    layer's config and would refuse it."""
    sizes = cfg.get("tuneless_layer_sizes")
    hidden = cfg.get("hidden_size")
    if not sizes or not hidden or any(hidden % n_q for n_q, _, _ in sizes):
        return {}
    return {"allow_global_per_layer_attribute_access": True,
            "per_layer_config": {str(i): {"num_attention_heads": n_q, "num_key_value_heads": n_kv,
                                          "intermediate_size": n_mlp}
                                 for i, (n_q, n_kv, n_mlp) in enumerate(sizes)}}


def save_folded(model: nn.Module, folder: str | os.PathLike, tokenizer=None,
                wrapper: nn.Module | None = None) -> Path:
    """save_pretrained into a new folder, atomically (never over an existing folder).

    Uniform sizes load with plain `AutoModelForCausalLM.from_pretrained`; per-layer sizes
    with `from_pretrained(folder, trust_remote_code=True)` from the small modeling file
    written beside the weights (plain transformers; tuneless need not be installed).
    wrapper: the vision-language model whose language model (tuneless.llm.text_model) was
    folded into `model`; the folder then holds that model with the folded language model
    inside and its vision tower unchanged (`wrapper` itself is left as it was)."""
    from tuneless.llm.multimodal import rewrapped

    adapter = adapter_for(model)
    # a vision-language model's language model goes back inside a copy of it
    whole = None if wrapper is None else rewrapped(model, wrapper)
    per_layer = bool(getattr(model.config, "tuneless_layer_sizes", None))
    with atomic_folder(folder) as tmp:
        # with the modeling file: today's key layout, since transformers gives custom code
        # no renamings of legacy names (a LLaVA lm_head, GPT-NeoX's embed_out would not load)
        (model if whole is None else whole).save_pretrained(
            str(tmp), **({"save_original_format": False} if per_layer or whole is not None
                         else {}))
        if per_layer:
            if whole is None:
                write_modeling(adapter, _hf_base(model), tmp)
            else:
                write_modeling(adapter, _hf_base(whole), tmp,
                               layers="model.language_model" + adapter.layer_prefix[5:])
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if whole is not None:  # the image processor and chat template come along
            import shutil

            from tuneless.llm.multimodal import processor_files

            for f in processor_files(wrapper):
                if not (tmp / f.name).exists():
                    shutil.copyfile(f, tmp / f.name)
    return Path(folder)


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
        h = adapter.projections(layer)["o"].out_features
        sizes_of = {"h": h, "hd": hd, "n_q": n_q, "n_kv": n_kv, "n_mlp": n_mlp}
        for parent_kind, name, n_in, n_out in adapter.projection_specs():
            parent = (adapter.attention(layer) if parent_kind == "attn"
                      else adapter.mlp_module(layer))
            old = getattr(parent, name)
            n_in, n_out = (spec_size(e, sizes_of) for e in (n_in, n_out))
            setattr(parent, name, empty_like(old, n_in, n_out))
        attn = adapter.attention(layer)
        if hasattr(attn, "num_key_value_heads"):
            attn.num_key_value_heads = n_kv
    adapter.finalize(model)


def spec_size(expr: str, sizes: dict[str, int]) -> int:
    """Evaluate one of the adapters' own size expressions: names, integers, + and *."""
    import ast

    def value(node) -> int:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            a, b = value(node.left), value(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        if isinstance(node, ast.Name):
            return sizes[node.id]
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise TunelessError(f"bad size expression {expr!r}")

    return value(ast.parse(expr, mode="eval").body)


# where a vision-language checkpoint keeps its language model (transformers 5 writes the
# older layout on the left; it reads both), and where a causal LM keeps it
_TEXT_KEYS = {"language_model.model.": "model.", "model.language_model.": "model.",
              "language_model.lm_head.": "lm_head.", "lm_head.": "lm_head."}


def load_folded(folder: str | os.PathLike, dtype: torch.dtype | None = None,
                trust_code: bool = False) -> nn.Module:
    """Load a model saved by save_folded (or any HF causal-LM folder).

    Python code shipped in the folder (a config's `auto_map`) runs only with
    trust_code=True, which is passed on to transformers as `trust_remote_code`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from tuneless.llm.adapters import supported_text_config

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise TunelessError(f"{folder} has no config.json; not a saved model folder")
    try:
        with quiet_config_validation():
            config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_code)
    except OSError as exc:  # transformers' word for a config.json that is not JSON
        raise TunelessError(f"cannot read {folder}/config.json: {first_line(exc)}") from exc
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise TunelessError(f"cannot read {folder}/config.json: {first_line(exc)}") from exc
        raise TunelessError(f"{folder} ships its own Python code (auto_map); load it with "
                            "trust_code=True (--trust-code) only if you trust it") from exc
    if supported_text_config(config) is not None:
        sizes = getattr(config.text_config, "tuneless_layer_sizes", None)
        if sizes:  # a folded vision-language model: its language model, for eval and generate
            import warnings

            warnings.warn(f"{folder} is a folded vision-language model; tuneless reads its "
                          "language model alone (a second fold would not keep the vision "
                          "tower)", stacklevel=2)
            return per_layer_model(folder, config.text_config, sizes, dtype, renamed=_TEXT_KEYS)
        from tuneless.llm.multimodal import load_text_model

        return load_text_model(folder, config, dtype, trust_code)
    sizes = getattr(config, "tuneless_layer_sizes", None)
    if not sizes:
        try:
            return AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=dtype or "auto", trust_remote_code=trust_code).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise TunelessError(f"cannot load the model in {folder}: {first_line(exc)}") from exc
    return per_layer_model(folder, config, sizes, dtype)


def per_layer_model(folder: Path, config, sizes: list, dtype=None,
                    renamed: dict[str, str] | None = None) -> nn.Module:
    """The causal LM of `config` with each layer at its saved sizes and the weights of
    `folder`; renamed: {checkpoint key prefix: causal-LM prefix} — then only those keys
    are read (a vision-language model's language model among its other weights)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter_for_config(config)
    with quiet_config_validation():
        model = AutoModelForCausalLM.from_config(config,
                                                 dtype=dtype or config.dtype or torch.float32)
    as_linear(model, inplace=True)  # GPT-2's Conv1Ds, as the fold left them
    _resize(model, sizes)
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if not state:
        raise TunelessError(f"no .safetensors weights in {folder}")
    if renamed:
        state = {new + k[len(old):]: v for k, v in state.items()
                 for old, new in renamed.items() if k.startswith(old)}
    names = model_keys(model, state, set(model.state_dict()))
    state = {names[k]: v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    head = model.get_output_embeddings()
    if tied:  # the output projection's weight is the embedding table, saved once
        missing = [k for k in missing if not (head is not None and head.weight is
                                              model.get_parameter(k))]
    if missing or unexpected:
        raise TunelessError(
            f"weights in {folder} do not match the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    if tied:
        head.weight = model.get_input_embeddings().weight
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
