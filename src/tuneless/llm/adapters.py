"""Where each LLaMA-family model keeps its attention, gated MLP and norms.

A small adapter per family instead of tracing: the decoder of every supported
model is `model.model.layers[i]` with `self_attn.{q,k,v,o}_proj` and
`mlp.{gate,up,down}_proj`; families differ in config names, biases and what
they call themselves, which is what the adapters record.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tuneless.errors import TunelessError, UnsupportedModelError


@dataclass(frozen=True)
class LlamaAdapter:
    """LLaMA 1/2/3 (multi-head or grouped-query attention, SwiGLU MLP, RMSNorm)."""

    family: str = "llama"
    layer_prefix: str = "model.layers"
    attn: str = "self_attn"
    mlp: str = "mlp"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn)

    def projections(self, layer: nn.Module) -> dict[str, nn.Linear]:
        """The seven linears of one decoder layer under the short names q k v o gate up down."""
        a, m = getattr(layer, self.attn), getattr(layer, self.mlp)
        return {
            "q": getattr(a, self.q),
            "k": getattr(a, self.k),
            "v": getattr(a, self.v),
            "o": getattr(a, self.o),
            "gate": getattr(m, self.gate),
            "up": getattr(m, self.up),
            "down": getattr(m, self.down),
        }

    def tensor_name(self, layer: int, short: str, kind: str = "weight") -> str:
        """The checkpoint key of one projection, for streaming from safetensors."""
        part = self.attn if short in ("q", "k", "v", "o") else self.mlp
        return f"{self.layer_prefix}.{layer}.{part}.{getattr(self, short)}.{kind}"

    def head_dim(self, config) -> int:
        hd = getattr(config, "head_dim", None)
        return int(hd) if hd else config.hidden_size // config.num_attention_heads

    def num_kv_heads(self, config) -> int:
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)


@dataclass(frozen=True)
class SmolLMAdapter(LlamaAdapter):
    """SmolLM / SmolLM2: LLaMA layout with grouped-query attention and tied embeddings."""

    family: str = "smollm"


@dataclass(frozen=True)
class MistralAdapter(LlamaAdapter):
    """Mistral-style GQA models (model_type "mistral"); same module names as LLaMA."""

    family: str = "mistral"


@dataclass(frozen=True)
class Qwen2Adapter(LlamaAdapter):
    """Qwen2: LLaMA layout plus q/k/v biases (the engine folds biases with their rows)."""

    family: str = "qwen2"


ADAPTERS: dict[str, LlamaAdapter] = {
    "llama": LlamaAdapter(),
    "smollm": SmolLMAdapter(),
    "mistral": MistralAdapter(),
    "qwen2": Qwen2Adapter(),
}


def _model_type(config) -> str:
    name = str(getattr(config, "_name_or_path", "") or "").lower()
    mtype = getattr(config, "model_type", "")
    if mtype == "llama" and "smollm" in name:
        return "smollm"
    return mtype


def adapter_for_config(config) -> LlamaAdapter:
    mtype = _model_type(config)
    if mtype not in ADAPTERS:
        raise UnsupportedModelError(
            f"model_type {getattr(config, 'model_type', None)!r} has no LLM adapter; supported: "
            + ", ".join(sorted({"llama", "mistral", "qwen2"}))
        )
    return ADAPTERS[mtype]


def is_causal_lm(model: object) -> bool:
    """True for a Hugging Face LLaMA-family causal LM that the LLM folder can handle."""
    config = getattr(model, "config", None)
    if config is None or not isinstance(model, nn.Module):
        return False
    if _model_type(config) not in ADAPTERS:
        return False
    inner = getattr(model, "model", None)
    return hasattr(inner, "layers") and hasattr(model, "lm_head")


def adapter_for(model: nn.Module) -> LlamaAdapter:
    """The adapter of a model, or a TunelessError naming what is wrong with it."""
    if not isinstance(model, nn.Module):
        raise TunelessError(
            f"expected a torch nn.Module language model, got {type(model).__name__}"
        )
    if not is_causal_lm(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a supported LLaMA-family causal LM "
            "(need model.model.layers, model.lm_head and model_type llama/mistral/qwen2)"
        )
    return adapter_for_config(model.config)
