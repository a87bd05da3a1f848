"""Decoder families as adapters of the one engine: where a family keeps its projections, and
which channel groups (tuneless.graph.groups) each decoder layer has.

A decoder layer has two kinds of units that shrink together:
- MLP channels: gate/up rows produce them, down columns consume them;
- attention heads: with grouped-query attention a kv head and the query heads that read it
  move as one unit ("kv-groups": k/v rows in blocks of head_dim, q rows and o columns in
  blocks of group·head_dim), or the query heads are merged inside each kv group
  ("query-heads": one group per kv head, q rows and o columns in blocks of head_dim).

The groups are ordinary `ChannelGroup`s, so `tuneless.reduce` rewrites an LLM exactly as it
rewrites a CNN, and the clustering features are `ChannelGroup.features`. An adapter adds
what tracing cannot know: module names, checkpoint keys, and the Hugging Face attributes
and config fields that must follow new sizes (`finalize`). A family whose layout is
LLaMA's is one `register_family` line; another layout overrides `layer_groups`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tuneless.errors import TunelessError, UnsupportedModelError
from tuneless.graph.groups import CONSUMER, PRODUCER, ChannelGroup, Slot
from tuneless.llm.plan import LayerPlan, Shape

SHORT = ("q", "k", "v", "o", "gate", "up", "down")
ATTN, MLP = ("q", "k", "v", "o"), ("gate", "up", "down")


@dataclass
class LayerGroups:
    """The channel groups of one decoder layer and the short name of each module they touch."""

    mlp: ChannelGroup
    heads: list[ChannelGroup]
    gqa: str
    roles: dict[str, str] = field(default_factory=dict)  # module name -> q k v o gate up down

    @property
    def groups(self) -> list[ChannelGroup]:
        return [self.mlp, *self.heads]


@dataclass(frozen=True)
class DecoderAdapter:
    """LLaMA 1/2/3 layout (multi-head or grouped-query attention, gated MLP, RMSNorm); the
    other families differ in names only or override a method."""

    family: str = "llama"
    layer_prefix: str = "model.layers"
    attn: str = "self_attn"
    mlp: str = "mlp"  # "": the MLP's projections sit on the decoder layer itself (OPT)
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    # (norm before attention, norm whose input is the stream between attention and MLP)
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    # sandwich norms (Gemma 2/3): applied to the attention and MLP outputs before the
    # residual add; the least-squares repair then aims through them
    post_norms: tuple[str, str] | None = None
    # False: the MLP is up → activation → down, no gate (NonGatedAdapter)
    gated: bool = True
    # True: attention and MLP read the same input and both add to the residual stream
    # (Phi, Cohere, GPT-J); layers with use_parallel_residual set are parallel too
    parallel: bool = False
    # the config field of the MLP width (GPT-J's n_inner, None there meaning 4 × hidden)
    mlp_field: str = "intermediate_size"
    # True: the projections are transformers' Conv1D, weights stored (in, out) (GPT-2)
    conv1d: bool = False

    @property
    def fused_qkv(self) -> bool:
        """One module holds [q | k | v] rows (Phi-3, GPT-2, GPT-NeoX)."""
        return self.q == self.k

    @property
    def fused_gate_up(self) -> bool:
        """One module holds [gate | up] rows (Phi-3, GLM). A gate-less MLP's one input module
        answers to both names without being fused (NonGatedAdapter)."""
        return self.gated and self.gate == self.up

    @property
    def fused(self) -> bool:
        """Some projections are slots at offsets inside one tensor."""
        return self.fused_qkv or self.fused_gate_up

    @property
    def mlp_mats(self) -> int:
        """hidden × width matrices in the MLP: gate, up, down; two without a gate."""
        return 3 if self.gated else 2

    @property
    def heads_foldable(self) -> bool:
        """Whether folded heads load in transformers (not where head_dim = hidden / heads:
        FixedHeadsAdapter)."""
        return True

    def head_ratio_for(self, schedule, head_ratio: float | None) -> float | None:
        """The head ratio a named schedule that folds heads ("uniform", "paper") gets when
        none is given: 0 where heads cannot fold, so those schedules fold MLPs only."""
        if head_ratio is None and not self.heads_foldable and schedule in ("uniform", "paper"):
            return 0.0
        return head_ratio

    def residual_scale(self, layer: nn.Module) -> float:
        """What the layer multiplies each sublayer's output by before the residual add
        (Granite's residual_multiplier; 1 elsewhere): the refit aims at output / scale."""
        return float(getattr(layer, "residual_multiplier", 1.0))

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layer_prefix)

    def attention(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.attn)

    def mlp_module(self, layer: nn.Module) -> nn.Module:
        """The module holding the MLP's projections (the layer itself where `mlp` is "")."""
        return getattr(layer, self.mlp) if self.mlp else layer

    def projections(self, layer: nn.Module) -> dict[str, nn.Linear]:
        """The seven linears of one decoder layer under the short names q k v o gate up down."""
        attn, mlp = self.attention(layer), self.mlp_module(layer)
        return {short: getattr(attn if short in ATTN else mlp, getattr(self, short))
                for short in SHORT}

    def module_name(self, layer: int, short: str) -> str:
        return self.spec_name(layer, "attn" if short in ATTN else "mlp", getattr(self, short))

    def spec_name(self, layer: int, parent: str, attr: str) -> str:
        """The full name of one projection module of projection_specs (parent "attn" | "mlp")."""
        part = self.attn if parent == "attn" else self.mlp
        return ".".join(x for x in (f"{self.layer_prefix}.{layer}", part, attr) if x)

    def tensor_name(self, layer: int, short: str, kind: str = "weight") -> str:
        """The checkpoint key of one projection, for streaming from safetensors."""
        return f"{self.module_name(layer, short)}.{kind}"

    def projection_specs(self) -> list[tuple[str, str, str, str]]:
        """(parent "attn" | "mlp", module attribute, in size, out size) of each projection
        module, sizes as expressions in h, hd, n_q, n_kv, n_mlp: what rebuilding a layer at
        given sizes means (tuneless's loader and the modeling file shipped with a fold). A
        module that holds several projections (fused q/k/v, gate/up) is listed once."""
        attn = ([("attn", self.q, "h", "(n_q + 2 * n_kv) * hd")] if self.fused_qkv else
                [("attn", self.q, "h", "n_q * hd"), ("attn", self.k, "h", "n_kv * hd"),
                 ("attn", self.v, "h", "n_kv * hd")])
        if self.fused_gate_up:
            mlp = [("mlp", self.gate, "h", "2 * n_mlp")]
        else:
            mlp = ([("mlp", self.gate, "h", "n_mlp")] if self.gated else []) + [
                ("mlp", self.up, "h", "n_mlp")]
        return [*attn, ("attn", self.o, "n_q * hd", "h"), *mlp,
                ("mlp", self.down, "n_mlp", "h")]

    def head_dim(self, config) -> int:
        hd = getattr(config, "head_dim", None)
        return int(hd) if hd else config.hidden_size // config.num_attention_heads

    def is_parallel(self, layer: nn.Module) -> bool:
        """Whether this decoder layer adds attention and MLP to the same input."""
        return self.parallel or bool(getattr(layer, "use_parallel_residual", False))

    def mlp_width(self, config) -> int:
        return int(getattr(config, self.mlp_field, None) or 4 * config.hidden_size)

    def num_kv_heads(self, config) -> int:
        return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)

    def shapes(self, model: nn.Module) -> list[Shape]:
        """Each layer's current sizes, read from its modules (they may differ per layer)."""
        hd = self.head_dim(model.config)
        return [self.layer_shape(layer, hd) for layer in self.layers(model)]

    def layer_shape(self, layer: nn.Module, hd: int) -> Shape:
        """One decoder layer's sizes, read from its projections (head_dim hd)."""
        p = self.projections(layer)
        n_q = _in(p["o"]) // hd  # o_proj reads the query heads only
        qkv_rows = sum(_out(m) for m in {id(p[s]): p[s] for s in "qkv"}.values())
        return Shape(hidden=_in(p["q"]), head_dim=hd, n_q=n_q,
                     n_kv=(qkv_rows // hd - n_q) // 2, n_mlp=_in(p["down"]),
                     attn_bias=p["q"].bias is not None, o_bias=p["o"].bias is not None,
                     mlp_bias=p["gate"].bias is not None, mlp_mats=self.mlp_mats)

    def segment_start(self, short: str, shape: Shape) -> int:
        """Where a projection's rows start inside its module: [q | k | v] in one module (Phi-3,
        GPT-2), [gate | up] in one module (Phi-3, GLM); 0 elsewhere."""
        if self.fused_qkv and short in ("k", "v"):
            return (shape.n_q if short == "k" else shape.n_q + shape.n_kv) * shape.head_dim
        if self.fused_gate_up and short == "up":
            return shape.n_mlp
        return 0

    def layer_groups(self, i: int, shape: Shape, gqa: str, first_id: int = 0) -> LayerGroups:
        """The channel groups of layer i (ids from first_id on)."""
        names = {short: self.module_name(i, short) for short in SHORT}
        hd, g = shape.head_dim, shape.group

        def rows(short, bias, offset=0, block=1):  # offsets in blocks, past a fused segment
            offset += self.segment_start(short, shape) // block
            out = [Slot(PRODUCER, names[short], "weight", 0, offset, block)]
            return out + ([Slot(PRODUCER, names[short], "bias", 0, offset, block)] if bias else [])

        mlp = ChannelGroup(first_id, shape.n_mlp,
                           (rows("gate", shape.mlp_bias) if self.gated else [])
                           + rows("up", shape.mlp_bias)
                           + [Slot(CONSUMER, names["down"], "weight", 1)])
        if gqa == "kv-groups" or g == 1:
            heads = [ChannelGroup(first_id + 1, shape.n_kv,
                                  rows("k", shape.attn_bias, 0, hd)
                                  + rows("v", shape.attn_bias, 0, hd)
                                  + rows("q", shape.attn_bias, 0, g * hd)
                                  + [Slot(CONSUMER, names["o"], "weight", 1, 0, g * hd)])]
        else:
            heads = [ChannelGroup(first_id + 1 + j, g,
                                  rows("q", shape.attn_bias, j * g, hd)
                                  + [Slot(CONSUMER, names["o"], "weight", 1, j * g, hd)])
                     for j in range(shape.n_kv)]
        return LayerGroups(mlp, heads, "kv-groups" if g == 1 else gqa,
                           {name: short for short, name in names.items()})

    def check_plans(self, plans: list[LayerPlan], shapes: list[Shape] | None = None) -> None:
        """Refuse, before any work, sizes this family cannot run (nothing to refuse here);
        shapes: the layers' current sizes, where the plans are to be reached from."""

    def unsupported(self, config) -> str | None:
        """Why a model of this family with this config cannot be compressed, else None."""
        return None

    def kept(self, groups: LayerGroups, shape: Shape, plan: LayerPlan) -> dict[int, int]:
        """Channels each group keeps under a layer plan (only the groups that shrink)."""
        out = {}
        if plan.n_mlp < shape.n_mlp:
            out[groups.mlp.id] = plan.n_mlp
        if groups.gqa == "kv-groups":
            if plan.n_kv < shape.n_kv:
                out[groups.heads[0].id] = plan.n_kv
        elif plan.n_q < shape.n_q:
            out.update({h.id: plan.n_q // plan.n_kv for h in groups.heads})
        return out

    def finalize(self, model: nn.Module) -> None:
        """Make the attention/MLP attributes and the config agree with the new tensors:
        uniform sizes go into the standard fields (plain `from_pretrained` rebuilds the
        model); per-layer sizes into `config.tuneless_layer_sizes`."""
        hd = self.head_dim(model.config)
        for layer in self.layers(model):
            self.finalize_layer(layer, hd)
        shapes = self.shapes(model)
        cfg = model.config
        cfg.head_dim = hd
        for key, value in self.config_fields(cfg.hidden_size, shapes).items():
            if value is not None:
                setattr(cfg, key, value)
            elif hasattr(cfg, key):
                delattr(cfg, key)

    def finalize_layer(self, layer: nn.Module, hd: int) -> None:
        """One layer's attention/MLP attributes from its tensors' sizes."""
        s = self.layer_shape(layer, hd)
        self.attention(layer).num_key_value_groups = s.group
        mlp = self.mlp_module(layer)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = s.n_mlp

    def config_fields(self, hidden_size: int, sizes: list) -> dict:
        """The config fields that describe layers of these sizes (a Shape or LayerPlan per
        layer; None = remove the field), for a config object or a config.json alike.

        Uniform sizes go into the standard fields (plain `from_pretrained` rebuilds the
        model); per-layer sizes into `tuneless_layer_sizes`. transformers validates
        hidden_size % num_attention_heads when it saves or loads a config, even with head_dim
        set, so a head count that does not divide goes the per-layer way too."""
        layers = [[s.n_q, s.n_kv, s.n_mlp] for s in sizes]
        if len({tuple(x) for x in layers}) == 1 and hidden_size % layers[0][0] == 0:
            n_q, n_kv, n_mlp = layers[0]
            return {"num_attention_heads": n_q, "num_key_value_heads": n_kv,
                    self.mlp_field: n_mlp, "tuneless_layer_sizes": None}
        return {"tuneless_layer_sizes": layers}


def _in(m: nn.Module) -> int:
    """Input width of a projection: an nn.Linear, or GPT-2's Conv1D (weight stored (in, out))
    as a user's model still has it."""
    return m.in_features if isinstance(m, nn.Linear) else m.weight.shape[0]


def _out(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.weight.shape[1]


ADAPTERS: dict[str, DecoderAdapter] = {}


def register_family(model_type: str, adapter: DecoderAdapter) -> DecoderAdapter:
    """Make `model_type` (a Hugging Face config's model_type) foldable with `adapter`."""
    ADAPTERS[model_type] = adapter
    return adapter


register_family("llama", DecoderAdapter())
register_family("smollm", DecoderAdapter(family="smollm"))  # LLaMA layout, tied embeddings
register_family("mistral", DecoderAdapter(family="mistral"))
register_family("qwen2", DecoderAdapter(family="qwen2"))  # q/k/v biases fold with their rows
# Qwen3: per-head q/k RMSNorms act on head_dim, which folding never changes.
register_family("qwen3", DecoderAdapter(family="qwen3"))
# LLaMA's layout under other names: SmolLM3 (no rotary embedding in every fourth layer),
# ERNIE 4.5, Seed-OSS, Ministral and Ministral 3, InternLM 3, IQuest-Coder, OLMo (LayerNorm
# without weights, q/k/v clipping), Granite (embedding, attention, residual and logit
# multipliers: residual_scale; Granite-SWA's attention sinks: SinksAdapter), HunYuan dense
# (per-head q/k norms on head_dim, which folding never changes). Helium and StableLM:
# FixedHeadsAdapter below.
for _family in ("smollm3", "ernie4_5", "seed_oss", "ministral", "ministral3", "internlm3",
                "iquestcoder", "olmo", "granite", "hunyuan_v1_dense"):
    register_family(_family, DecoderAdapter(family=_family))
# HyperCLOVA X: Granite's residual multiplier and, with use_post_norm, RMSNorms on each
# sublayer's output (nn.Identity without: the repair then aims at the stream directly).
register_family("hyperclovax", DecoderAdapter(family="hyperclovax",
                                              post_norms=("post_norm1", "post_norm2")))
# Gemma: LLaMA layout with GeGLU and (1 + w) RMSNorms; head_dim is its own config field.
register_family("gemma", DecoderAdapter(family="gemma"))
# Gemma 2/3: sandwich norms around attention and MLP; soft-capping, sliding windows, q/k
# norms (Gemma 3) and scaled embeddings are untouched by folding.
_SANDWICH = dict(norms=("input_layernorm", "pre_feedforward_layernorm"),
                 post_norms=("post_attention_layernorm", "post_feedforward_layernorm"))
register_family("gemma2", DecoderAdapter(family="gemma2", **_SANDWICH))
register_family("gemma3_text", DecoderAdapter(family="gemma3", **_SANDWICH))

@dataclass(frozen=True)
class UniformHeadsAdapter(DecoderAdapter):
    """A family whose layers are built from the config's global head counts (so per-layer
    head counts cannot load): plans that differ per layer are refused by name, and the
    head counts always go into the standard config fields. `why` says what reads them."""

    why: str = "attention reads one global head count"

    def check_plans(self, plans: list[LayerPlan], shapes: list[Shape] | None = None) -> None:
        if len({(p.n_q, p.n_kv) for p in plans}) > 1:
            raise TunelessError(f"{self.family}: {self.why}, so head counts must be the same "
                                "in every layer; use a schedule that keeps heads uniform (e.g. "
                                "paper-mlp or uniform)")

    def config_fields(self, hidden_size: int, sizes: list) -> dict:
        """As LLaMA's, and the head counts always in the standard fields (they are uniform:
        check_plans), which the family reads when it builds or runs a layer."""
        return {**super().config_fields(hidden_size, sizes),
                "num_attention_heads": sizes[0].n_q, "num_key_value_heads": sizes[0].n_kv}

    def finalize(self, model: nn.Module) -> None:
        shapes = self.shapes(model)
        self.check_plans([LayerPlan(s.n_q, s.n_kv, s.n_mlp) for s in shapes])
        super().finalize(model)


@dataclass(frozen=True)
class FusedAdapter(UniformHeadsAdapter):
    """Phi-3 layout: one qkv_proj ([q | k | v] rows) and one gate_up_proj ([gate | up] rows).
    The groups are the same as LLaMA's, as slots at offsets inside the fused tensors. Phi-3's
    attention reads the global head count at run time, so head counts must stay uniform
    across layers (MLP sizes may differ per layer)."""

    q: str = "qkv_proj"
    k: str = "qkv_proj"
    v: str = "qkv_proj"
    gate: str = "gate_up_proj"
    up: str = "gate_up_proj"

    def finalize_layer(self, layer: nn.Module, hd: int) -> None:
        super().finalize_layer(layer, hd)
        self.attention(layer).num_key_value_heads = self.layer_shape(layer, hd).n_kv


register_family("phi3", FusedAdapter(family="phi3"))


@dataclass(frozen=True)
class NonGatedAdapter(DecoderAdapter):
    """LLaMA's attention with an MLP of one input projection, an activation and down_proj
    (no gate): the input module answers to both "gate" (what reads the MLP input) and "up"."""

    gated: bool = False
    gate: str = "up_proj"


# Arcee (ReLU²), Nemotron (ReLU², LayerNorm1P, partial rotary), Jais 2; nanochat names its
# MLP fc1 / fc2 and has per-head q/k norms (on head_dim); Apertus (xIELU) names its norms
# attention_layernorm / feedforward_layernorm and has per-head q/k norms.
for _family in ("arcee", "nemotron", "jais2"):
    register_family(_family, NonGatedAdapter(family=_family))
register_family("nanochat", NonGatedAdapter(family="nanochat", gate="fc1", up="fc1",
                                            down="fc2"))
# StarCoder2: LayerNorms and biases everywhere, c_fc → GELU → c_proj.
register_family("starcoder2", NonGatedAdapter(family="starcoder2", gate="c_fc", up="c_fc",
                                              down="c_proj"))
register_family("apertus", NonGatedAdapter(family="apertus", norms=(
    "attention_layernorm", "feedforward_layernorm")))

# GLM: LLaMA's q/k/v/o and one gate_up_proj ([gate | up] rows, split in half at run time,
# so any width loads; the MLP group's slots sit at offsets in it); GLM-4 adds sandwich norms.
_GATE_UP = dict(gate="gate_up_proj", up="gate_up_proj")
register_family("glm", DecoderAdapter(family="glm", **_GATE_UP))
register_family("glm4", DecoderAdapter(family="glm4", post_norms=(
    "post_self_attn_layernorm", "post_mlp_layernorm"), **_GATE_UP))


@dataclass(frozen=True)
class QKNormAdapter(UniformHeadsAdapter):
    """OLMo 2 / OLMo 3: LLaMA's projections with RMSNorms on each sublayer's *output* only
    (the MLP reads the stream itself, so `norms[1]` is the MLP, whose input is that stream)
    and q/k RMSNorms over the whole q and k projections: their gains are per channel of
    those rows and fold with them. Each layer builds its q/k norms from the global head
    counts, so head counts stay uniform across layers (MLP sizes may differ)."""

    norms: tuple[str, ...] = ("self_attn", "mlp")
    post_norms: tuple[str, str] | None = ("post_attention_layernorm",
                                          "post_feedforward_layernorm")
    q_norm: str = "q_norm"
    k_norm: str = "k_norm"
    why: str = "each layer's q/k norms are sized by the global head counts"

    def layer_groups(self, i: int, shape: Shape, gqa: str, first_id: int = 0) -> LayerGroups:
        lg = super().layer_groups(i, shape, gqa, first_id)
        attn = f"{self.layer_prefix}.{i}.{self.attn}"
        norm_of = {f"{attn}.{self.q}": f"{attn}.{self.q_norm}",
                   f"{attn}.{self.k}": f"{attn}.{self.k_norm}"}
        for g in lg.heads:  # each q/k weight row slot gets its norm's gains beside it
            g.slots.extend([Slot(PRODUCER, norm_of[s.module], "weight", 0, s.offset, s.block)
                            for s in g.slots if s.kind == PRODUCER and s.param == "weight"
                            and s.module in norm_of])
        return lg


@dataclass(frozen=True)
class SinksAdapter(UniformHeadsAdapter):
    """LLaMA's projections with a learnable attention sink per query head (Granite-SWA): the
    sink entries move and merge with their heads' q rows. Each layer sizes its sinks by the
    global head count, so head counts stay uniform across layers (MLP sizes may differ)."""

    sinks: str = "sinks"
    why: str = "each layer's attention sinks are sized by the global head count"

    def layer_groups(self, i: int, shape: Shape, gqa: str, first_id: int = 0) -> LayerGroups:
        lg = super().layer_groups(i, shape, gqa, first_id)
        attn, q = f"{self.layer_prefix}.{i}.{self.attn}", self.module_name(i, "q")
        for g in lg.heads:  # a q slot's block of rows is block / head_dim heads
            g.slots.extend([Slot(PRODUCER, attn, self.sinks, 0, s.offset,
                                 s.block // shape.head_dim)
                            for s in g.slots if s.kind == PRODUCER and s.module == q
                            and s.param == "weight"])
        return lg


register_family("granite_swa", SinksAdapter(family="granite_swa"))


# EXAONE 4.0: OLMo 2's output-only sublayer norms, with per-head q/k norms (Qwen3's: on
# head_dim, which folding never changes), so head counts may differ per layer.
register_family("exaone4", DecoderAdapter(family="exaone4", norms=QKNormAdapter.norms,
                                          post_norms=QKNormAdapter.post_norms))
# VaultGemma: Gemma's layout with the MLP's input norm named pre_feedforward_layernorm.
register_family("vaultgemma", DecoderAdapter(family="vaultgemma", norms=(
    "input_layernorm", "pre_feedforward_layernorm")))
register_family("olmo2", QKNormAdapter(family="olmo2"))
register_family("olmo3", QKNormAdapter(family="olmo3"))


@dataclass(frozen=True)
class FixedHeadsAdapter(DecoderAdapter):
    """LLaMA's layout with head_dim = hidden_size / num_attention_heads and an o_proj that is
    hidden × hidden whatever the head count (StableLM, Helium, GPT-J): folded heads would not
    load in transformers, so only MLP channels fold (the default schedules keep heads
    anyway)."""

    @property
    def heads_foldable(self) -> bool:
        return False

    def check_plans(self, plans: list[LayerPlan], shapes: list[Shape] | None = None) -> None:
        if shapes is not None and any((p.n_q, p.n_kv) != (s.n_q, s.n_kv)
                                      for p, s in zip(plans, shapes)):
            raise TunelessError(f"{self.family}: head_dim is hidden_size / num_attention_heads "
                                "and o_proj stays hidden × hidden, so heads cannot be folded; "
                                "use a schedule that keeps heads (the default, inner-mlp, "
                                "paper-mlp) or head_ratio=0")


# StableLM: parallel attention and MLP where use_parallel_residual is set (is_parallel).
register_family("stablelm", FixedHeadsAdapter(family="stablelm"))
register_family("helium", FixedHeadsAdapter(family="helium"))
# GPT-J: attention and MLP in parallel after one LayerNorm, fc_in → GELU → fc_out, the MLP
# width in n_inner.
register_family("gptj", FixedHeadsAdapter(
    family="gptj", layer_prefix="transformer.h", attn="attn", o="out_proj", gated=False,
    gate="fc_in", up="fc_in", down="fc_out", norms=("ln_1", "ln_1"), parallel=True,
    mlp_field="n_inner"))


@dataclass(frozen=True)
class OPTAdapter(FixedHeadsAdapter):
    """OPT: q/k/v/out_proj with biases, fc1 → ReLU → fc2 on the decoder layer itself, the
    MLP width in ffn_dim; o_proj is hidden × hidden, so heads stay fixed. Post-norm OPT
    (do_layer_norm_before=False, OPT-350m) is refused by name."""

    layer_prefix: str = "model.decoder.layers"
    o: str = "out_proj"
    mlp: str = ""
    gated: bool = False
    gate: str = "fc1"
    up: str = "fc1"
    down: str = "fc2"
    norms: tuple[str, ...] = ("self_attn_layer_norm", "final_layer_norm")
    mlp_field: str = "ffn_dim"

    def unsupported(self, config) -> str | None:
        if not getattr(config, "do_layer_norm_before", True):
            return ("opt with do_layer_norm_before=False (norms after each sublayer, as in "
                    "OPT-350m) is not supported: the repair aims at the stream before the norm")
        return None


register_family("opt", OPTAdapter(family="opt"))

# GPT-NeoX (Pythia): one query_key_value with each head's q, k and v rows side by side (so
# heads stay fixed), dense_h_to_4h → GELU → dense_4h_to_h, parallel where
# use_parallel_residual is set (the default), the output projection named embed_out.
register_family("gpt_neox", FixedHeadsAdapter(
    family="gpt_neox", layer_prefix="gpt_neox.layers", attn="attention", q="query_key_value",
    k="query_key_value", v="query_key_value", o="dense", gated=False, gate="dense_h_to_4h",
    up="dense_h_to_4h", down="dense_4h_to_h"))
# GPT-2: one c_attn ([q | k | v] rows), c_fc → GELU → c_proj, the MLP width in n_inner.
# Its projections are transformers' Conv1D, which the methods see as nn.Linear
# (tuneless.llm.conv1d).
register_family("gpt2", FixedHeadsAdapter(
    family="gpt2", layer_prefix="transformer.h", attn="attn", q="c_attn", k="c_attn",
    v="c_attn", o="c_proj", gated=False, gate="c_fc", up="c_fc", down="c_proj",
    norms=("ln_1", "ln_2"), mlp_field="n_inner", conv1d=True))


@dataclass(frozen=True)
class ParallelAdapter(DecoderAdapter):
    """Attention and MLP read one LayerNorm's output and both add to the stream (Phi-1/1.5/2,
    Cohere): the repair aims each consumer at the original layer output minus what the rest
    of the folded layer writes. Per-head q/k norms sized by the config (Phi's qk_layernorm,
    Cohere's use_qk_norm) are refused by name."""

    norms: tuple[str, ...] = ("input_layernorm", "input_layernorm")
    parallel: bool = True
    qk_norm_flag: str = "use_qk_norm"

    def unsupported(self, config) -> str | None:
        if getattr(config, self.qk_norm_flag, False):
            return (f"{self.family} with {self.qk_norm_flag}=True is not supported yet: its q/k "
                    "norms are sized by the global head count and are not folded")
        return None


register_family("phi", ParallelAdapter(family="phi", o="dense", gated=False, gate="fc1",
                                       up="fc1", down="fc2", qk_norm_flag="qk_layernorm"))
register_family("cohere", ParallelAdapter(family="cohere"))
register_family("cohere2", ParallelAdapter(family="cohere2"))

LlamaAdapter = DecoderAdapter  # the name before issue 18


def supported() -> str:
    return ", ".join(sorted(m for m in ADAPTERS if m != "smollm"))


def _model_type(config) -> str:
    name = str(getattr(config, "_name_or_path", "") or "").lower()
    mtype = getattr(config, "model_type", "")
    if mtype == "llama" and "smollm" in name:
        return "smollm"
    return mtype


def supported_text_config(config):
    """The `text_config` of a wrapper config whose own model_type has no adapter but whose
    decoder's has; None for anything else."""
    text = getattr(config, "text_config", None)
    if text is None or getattr(config, "model_type", None) in ADAPTERS:
        return None
    return text if getattr(text, "model_type", None) in ADAPTERS else None


def adapter_for_config(config) -> DecoderAdapter:
    mtype = _model_type(config)
    if supported_text_config(config) is not None:
        raise UnsupportedModelError(
            f"model_type {mtype!r} is a vision-language model; fold its language model "
            f"({config.text_config.model_type}): tuneless.llm.text_model(model) in Python; "
            "`tuneless compress` takes it out itself, the streamed fold does not")
    if mtype not in ADAPTERS:
        raise UnsupportedModelError(
            f"model_type {getattr(config, 'model_type', None)!r} has no decoder adapter; "
            f"supported families: {supported()} (tuneless.llm.register_family adds one)")
    why = ADAPTERS[mtype].unsupported(config)
    if why:
        raise UnsupportedModelError(why)
    return ADAPTERS[mtype]


def is_hf_causal_lm(model: object) -> bool:
    """True for any Hugging Face model with a config and a language-model head."""
    return (isinstance(model, nn.Module) and getattr(model, "config", None) is not None
            and hasattr(model.config, "model_type")
            and (_has_head(model) or "CausalLM" in type(model).__name__))


def _has_head(model: nn.Module) -> bool:
    """A language-model head: lm_head, or whatever the model names its output projection
    (GPT-NeoX's embed_out)."""
    if hasattr(model, "lm_head"):
        return True
    try:
        return model.get_output_embeddings() is not None
    except (AttributeError, NotImplementedError):
        return False


def is_causal_lm(model: object) -> bool:
    """True for a Hugging Face causal LM of a family with an adapter."""
    if not is_hf_causal_lm(model) or _model_type(model.config) not in ADAPTERS:
        return False
    adapter = ADAPTERS[_model_type(model.config)]
    try:
        adapter.layers(model)
    except AttributeError:
        return False
    return _has_head(model)


def adapter_for(model: nn.Module) -> DecoderAdapter:
    """The adapter of a model, or a one-line TunelessError naming what is wrong with it."""
    if not isinstance(model, nn.Module):
        raise TunelessError(
            f"expected a torch nn.Module language model, got {type(model).__name__}")
    if is_hf_causal_lm(model) and _model_type(model.config) not in ADAPTERS:
        adapter_for_config(model.config)  # raises, naming the model_type
    if not is_causal_lm(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a supported decoder-only causal LM (need "
            f"{DecoderAdapter.layer_prefix}, lm_head and a model_type among: {supported()})")
    return adapter_for_config(model.config)


def layer_graph(adapter: DecoderAdapter, shapes: list[Shape], gqa: str,
                layers: list[int] | None = None):
    """(GroupGraph, {layer: LayerGroups}) over the given layers (all by default)."""
    from tuneless.graph.groups import GroupGraph

    per, groups, next_id = {}, [], 0
    for i in range(len(shapes)) if layers is None else layers:
        lg = adapter.layer_groups(i, shapes[i], gqa, next_id)
        per[i] = lg
        groups.extend(lg.groups)
        next_id += len(lg.groups)
    return GroupGraph(groups, "decoder"), per


def whitening(stats, roles: dict[str, str]):
    """The activation-aware feature transform of one layer (tuneless.llm.activation_stats):
    producer rows mapped through their input's whitening factor, consumer columns scaled by
    the RMS of the activation each carries."""
    def transform(slot: Slot, rows: torch.Tensor) -> torch.Tensor:
        short = roles.get(slot.module)  # None: a norm's gains (OLMo 2), kept as biases are
        if short is None:
            return rows
        if slot.kind == PRODUCER and slot.param == "weight":
            factor = stats.attn_in if short in ("q", "k", "v") else stats.mlp_in
            return (rows.reshape(-1, factor.shape[0]) @ factor).reshape(rows.shape[0], -1)
        if slot.kind == CONSUMER:
            rms = stats.o_rms if short == "o" else stats.mlp_rms
            n = rows.shape[0]
            part = rms[slot.offset * slot.block:(slot.offset + n) * slot.block]
            return (rows.reshape(n, slot.block, -1) * part.reshape(n, slot.block, 1)).reshape(n, -1)
        return rows
    return transform
