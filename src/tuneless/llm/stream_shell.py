"""A checkpoint's model with its decoder layers left on disk, for the streamed repair.

The least-squares repair walks the layers in order on calibration tokens (tuneless.llm.refit).
Streamed, only the part of the model around the layers is built for real (embeddings,
masks, rotary tables: what the first layer's inputs and every layer's keyword arguments
come from); the layers themselves are built on the meta device and materialised one at
a time from the checkpoint's tensors, so memory holds one original and one folded layer
plus the calibration hidden states.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tuneless.errors import TunelessError
from tuneless.hooks import StopForward
from tuneless.llm.hf import model_keys


class _Recorder(nn.Module):
    """Stands in for decoder layer i: records its inputs, passes the hidden states on."""

    def __init__(self, i: int, last: int, box: dict) -> None:
        super().__init__()
        self.i, self.last, self.box = i, last, box

    def forward(self, hidden, *args, **kwargs):
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        if self.i == 0:
            self.box["hidden"] = hidden
        kwargs.pop("hidden_states", None)
        self.box.setdefault("kwargs", {})[self.i] = kwargs
        if self.i == self.last:
            raise StopForward
        return (hidden,)  # older transformers index [0]; newer ones pass it on (unwrapped)


def _materialise(module: nn.Module, skip: set[int], params: bool = True) -> None:
    """Replace meta buffers (and parameters) of every module but those in `skip` by CPU
    tensors."""
    for mod in module.modules():
        if id(mod) in skip:
            continue
        for name, p in list(mod._parameters.items()) if params else ():
            if p is not None and p.is_meta:
                mod._parameters[name] = nn.Parameter(torch.empty_like(p, device="cpu"),
                                                     requires_grad=False)
        for name, b in list(mod._buffers.items()):
            if b is not None and b.is_meta:
                mod._buffers[name] = torch.empty_like(b, device="cpu")


def _non_persistent(mod: nn.Module) -> bool:
    return any(name in mod._non_persistent_buffers_set for name in mod._buffers)


class Shell:
    """Build with the checkpoint's config and a `get(key)` tensor reader; then
    `inputs(ids)` gives (hidden states entering layer 0, per-layer kwargs) and `layer(i, t)`
    materialises decoder layer i from its tensors `t` (full checkpoint names)."""

    def __init__(self, config, adapter, get, keys) -> None:
        import transformers
        from transformers import AutoModelForCausalLM

        if int(transformers.__version__.split(".")[0]) < 5:
            raise TunelessError("the streamed repair needs transformers>=5 (it rebuilds the "
                                "rotary tables of a model built on the meta device)")
        self.adapter, self.head_dim = adapter, adapter.head_dim(config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(copy.deepcopy(config)).float()
        layers = adapter.layers(model)
        self.meta_layers = list(layers)
        self.box: dict = {}
        self._cast = None  # the hook that casts embedding lookups to float32
        for i in range(len(layers)):
            layers[i] = _Recorder(i, len(layers) - 1, self.box)
        head = model.get_output_embeddings()  # never runs: the last recorder stops the pass
        emb = model.get_input_embeddings()
        emb_key = next(n for n, m in model.named_modules() if m is emb) + ".weight"
        skip = {id(head)} if head is not None else set()
        skip |= {id(m) for r in layers for m in r.modules()}
        _materialise(model, skip | {id(emb)})
        _materialise(emb, set(), params=False)  # the embedding table itself loads below
        for mod in model.modules():  # rotary tables, embedding scales: not in checkpoints
            if id(mod) not in skip and _non_persistent(mod):
                model._init_weights(mod)  # (the still-meta embedding table is left alone)
        state = model.state_dict()
        for key in keys:
            if key.startswith(adapter.layer_prefix + "."):
                continue
            if key == emb_key:  # the largest tensor: kept in the checkpoint's dtype, one copy;
                emb.weight = nn.Parameter(get(key), requires_grad=False)  # lookups → float32
                self._cast = emb.register_forward_hook(lambda _m, _a, out: out.float())
            elif key in state and not state[key].is_meta:
                state[key].copy_(get(key))
        if emb.weight.is_meta:
            raise TunelessError(f"the checkpoint has no {emb_key}")
        self.model = model.eval()

    @torch.no_grad()
    def inputs(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        self.box.clear()
        try:
            self.model(input_ids=ids, use_cache=False)
        except StopForward:
            pass
        kwargs = self.box.get("kwargs", {})
        if "hidden" not in self.box or len(kwargs) != len(self.meta_layers):
            raise TunelessError("the decoder layers did not all run in the model's forward pass")
        return self.box["hidden"], [kwargs[i] for i in range(len(self.meta_layers))]

    def release_embeddings(self) -> None:
        """Free the input embeddings once the calibration inputs are known (the largest
        tensor outside the layers)."""
        emb = self.model.get_input_embeddings()
        emb.weight = nn.Parameter(torch.empty_like(emb.weight, device="meta"),
                                  requires_grad=False)

    def layer(self, i: int, tensors: dict[str, torch.Tensor]) -> nn.Module:
        """Decoder layer i at the sizes of `tensors` (original or folded), in float32."""
        prefix = f"{self.adapter.layer_prefix}.{i}."
        layer = copy.deepcopy(self.meta_layers[i])
        for mod in layer.modules():  # buffers no checkpoint holds, rebuilt before loading
            if _non_persistent(mod):
                _materialise(mod, set())
                self.model._init_weights(mod)
        state = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
        for name, t in state.items():  # folded tensors change shapes: parameters follow them
            owner, _, leaf = name.rpartition(".")
            mod = layer.get_submodule(owner)
            value = t.to(torch.float32, copy=True)  # one copy, whatever the stored dtype
            if leaf in mod._parameters:
                mod._parameters[leaf] = nn.Parameter(value, requires_grad=False)
            elif leaf in mod._buffers:
                mod._buffers[leaf] = value
            if isinstance(mod, nn.Linear) and leaf == "weight":
                mod.out_features, mod.in_features = t.shape
        missing = [n for n, p in list(layer.named_parameters()) + list(layer.named_buffers())
                   if p.is_meta]
        if missing:
            raise TunelessError(f"layer {i}: tensors missing from the checkpoint: "
                                f"{', '.join(missing[:3])}")
        self.adapter.finalize_layer(layer, self.head_dim)
        _own_head_counts(self.adapter, layer, self.head_dim)
        return layer.eval()


def split_layer_keys(keys, prefix: str, n_layers: int) -> tuple[list[list[str]], list[str]]:
    """Checkpoint tensor names by decoder layer (names under `prefix` + "i."), and the rest."""
    per_layer: list[list[str]] = [[] for _ in range(n_layers)]
    others = []
    for key in keys:
        if key.startswith(prefix):
            per_layer[int(key[len(prefix):].split(".")[0])].append(key)
        else:
            others.append(key)
    return per_layer, others


class _LazyLayer(nn.Module):
    """Stands in for decoder layer i during sampling: builds the layer from the checkpoint
    for each call and drops it after, so memory holds one layer (plus the KV cache)."""

    def __init__(self, build, meta_layer: nn.Module) -> None:
        super().__init__()
        self._build = build
        for name, value in vars(meta_layer).items():  # e.g. attention_type, read by the model
            if not name.startswith("_") and not isinstance(value, nn.Module | torch.Tensor):
                setattr(self, name, value)

    def forward(self, *args, **kwargs):
        return self._build()(*args, **kwargs)


def sampling_model(config, adapter, get, keys, generation_config=None) -> nn.Module:
    """The checkpoint's causal LM in float32 with every decoder layer lazy (`_LazyLayer`):
    `generate` works on it as on the loaded model, one layer in memory at a time, so the
    streamed fold can sample its own calibration text (repair="self") out of core."""
    shell = Shell(config, adapter, get, keys)
    model = shell.model
    layers = adapter.layers(model)
    per_layer, _ = split_layer_keys(keys, adapter.layer_prefix + ".", len(layers))
    for i in range(len(layers)):
        def build(i=i):
            return shell.layer(i, {key: get(key) for key in per_layer[i]})
        layers[i] = _LazyLayer(build, shell.meta_layers[i])
    emb = model.get_input_embeddings()
    emb.weight = nn.Parameter(emb.weight.detach().float(), requires_grad=False)
    shell._cast.remove()  # the table is float32 now: no cast on the way out
    head = model.get_output_embeddings()
    if head is not None and head.weight.is_meta:
        name = next(n for n, m in model.named_modules() if m is head)
        own = {f"{name}.{p}" for p, _ in head.named_parameters(recurse=False)}
        found = {v: k for k, v in model_keys(model, keys, own).items()}  # NeoX: embed_out
        if f"{name}.weight" in found and not getattr(config, "tie_word_embeddings", False):
            for param, _ in list(head.named_parameters(recurse=False)):  # GPT-J: a bias too
                setattr(head, param, nn.Parameter(get(found[f"{name}.{param}"]).float(),
                                                  requires_grad=False))
        else:  # tied: the output projection is the embedding table
            head.weight = emb.weight
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise TunelessError(f"cannot sample from the checkpoint: {left[0]} was not loaded")
    if generation_config is not None:
        model.generation_config = generation_config
    return model.eval()


def _own_head_counts(adapter, layer: nn.Module, hd: int) -> None:
    """A layer rebuilt on its own holds a private copy of the config (deep-copied with it):
    give that copy the layer's head counts, for attentions that split a fused q/k/v by the
    config's count at run time (Phi-3); head_dim is pinned first, since some configs derive
    it from the head count."""
    config = getattr(adapter.attention(layer), "config", None)
    if config is None:
        return
    shape = adapter.layer_shape(layer, hd)
    config.head_dim = hd
    config.num_attention_heads, config.num_key_value_heads = shape.n_q, shape.n_kv
