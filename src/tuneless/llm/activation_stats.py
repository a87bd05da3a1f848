"""Second moments of each decoder layer's inputs on calibration tokens, for folding features.

Clustering raw weight rows treats every input dimension alike, but a transformer's hidden
states are far from isotropic (a few dimensions carry most of the energy). With
C = E[x xᵀ] over calibration tokens and C = L Lᵀ,

    E[((w_i − w_j)·x)²] = ||(w_i − w_j) L||²,

so k-means on rows mapped through L groups channels whose pre-activations actually agree
on the model's inputs. On the consumer side a channel's column is scaled by the RMS of the
activation it carries (E[h_i²]^½): merging columns of channels that are nearly silent costs
little. The statistics come from the uncompressed model; with `repair="self"` the tokens
are its own samples, so the features stay data-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tuneless.hooks import Moments, StopForward
from tuneless.llm.adapters import adapter_for
from tuneless.modes import evaluating
from tuneless.progress import progress


@dataclass
class LayerStats:
    """Whitening factors of one decoder layer (float32).

    attn_in: L with L Lᵀ = E[x xᵀ] of the attention input (q/k/v see it), hidden × hidden;
    mlp_in: the same for the MLP input (gate/up see it);
    o_rms: RMS of each o_proj input dimension (the heads' outputs), n_q·head_dim;
    mlp_rms: RMS of each down_proj input (the intermediate channels), intermediate size.
    """

    attn_in: torch.Tensor
    mlp_in: torch.Tensor
    o_rms: torch.Tensor
    mlp_rms: torch.Tensor


def cholesky_factor(second_moment: torch.Tensor, rel_jitter: float = 1e-6) -> torch.Tensor:
    """L with L Lᵀ = C + εI (ε relative to the mean diagonal, raised until C is factorable)."""
    c = (second_moment + second_moment.T).double() / 2
    eye = torch.eye(c.shape[0], dtype=c.dtype)
    jitter = float(c.diagonal().mean().clamp(min=1e-30)) * rel_jitter
    for _ in range(8):
        factor, info = torch.linalg.cholesky_ex(c + jitter * eye)
        if int(info) == 0:
            return factor.float()
        jitter *= 10
    vals, vecs = torch.linalg.eigh(c)  # numerically indefinite beyond the jitters tried
    return (vecs * vals.clamp(min=0).sqrt()).float()


def _watch(adapter, layer: nn.Module, full: dict[str, bool], skip: int = 0):
    """Moments meters on the inputs of the projections `full` names (of q, gate, o, down),
    each sequence's first `skip` positions left out."""
    proj = adapter.projections(layer)
    meters = {name: Moments(f, skip) for name, f in full.items()}
    return meters, [proj[name].register_forward_pre_hook(m) for name, m in meters.items()]


@torch.no_grad()
def _moments(model: nn.Module, ids: torch.Tensor, full: dict[str, bool], batch_size: int,
             show_progress: bool, skip: int = 0, tape=None) -> list[dict[str, Moments]]:
    """One pass over calibration ids: per layer, the input moments of the modules that read
    the attention input ("q"), the MLP input ("gate"), the head outputs ("o") and the MLP
    channels ("down"); full second moments or diagonals as `full` says. tape: a
    tuneless.llm.refit.ReferenceTape that records the same pass for the refit."""
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    meters, handles = [], []
    for layer in layers:
        m, h = _watch(adapter, layer, full, skip)
        meters.append(m)
        handles += h
    if tape is not None:  # before `stop`: the last layer's output is recorded first
        handles += tape.hooks()

    def stop(*_args):  # everything needed is seen: skip the final norm and the vocabulary head
        raise StopForward

    handles.append(layers[-1].register_forward_hook(stop))
    try:
        with evaluating(model):
            for start in progress(range(0, len(ids), batch_size),
                                  total=-(-len(ids) // batch_size), desc="activation stats",
                                  unit="batch", disable=not show_progress):
                try:
                    model(input_ids=ids[start:start + batch_size], use_cache=False)
                except StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
    return meters


_STATS = {"q": True, "gate": True, "o": False, "down": False}  # full moments or diagonals


def _layer_stats(m: dict[str, Moments]) -> LayerStats:
    return LayerStats(cholesky_factor(m["q"].mean()), cholesky_factor(m["gate"].mean()),
                      m["o"].mean().sqrt().float(), m["down"].mean().sqrt().float())


def collect_stats(model: nn.Module, ids: torch.Tensor, *, batch_size: int = 16,
                  show_progress: bool = False, skip: int = 0, tape=None) -> list[LayerStats]:
    """Run the model on calibration ids (batch, seq_len) once and return per-layer stats
    (each sequence's first `skip` positions left out); tape: a ReferenceTape to record the
    same pass for the refit."""
    return [_layer_stats(m)
            for m in _moments(model, ids, _STATS, batch_size, show_progress, skip, tape)]


def layer_stats(adapter, layer: nn.Module, hidden: torch.Tensor, kwargs: dict, *,
                batch_size: int = 16, skip: int = 0, tape=None) -> LayerStats:
    """The same statistics for one decoder layer, from the hidden states entering it (the
    streamed fold: layers one at a time, batches as collect_stats runs them); tape: a
    ReferenceTape of this layer that records the same pass for the refit."""
    return _layer_stats(layer_moments(adapter, layer, hidden, kwargs, _STATS,
                                      batch_size=batch_size, skip=skip, tape=tape)[0])


@torch.no_grad()
def layer_moments(adapter, layer: nn.Module, hidden: torch.Tensor, kwargs: dict,
                  full: dict[str, bool], *, batch_size: int = 16, skip: int = 0, tape=None
                  ) -> tuple[dict[str, Moments], torch.Tensor]:
    """Moments of the inputs `full` names (full second moments or diagonals) of one decoder
    layer fed `hidden`, and the layer's output: a model walked one layer at a time holds
    one layer's statistics, not every layer's."""
    meters, handles = _watch(adapter, layer, full, skip)
    if tape is not None:
        handles += tape.hooks()
    outs = []
    try:
        for start in range(0, len(hidden), batch_size):
            part = {k: _rows(v, start, batch_size, len(hidden)) for k, v in kwargs.items()}
            out = layer(hidden[start:start + batch_size], **part)
            outs.append(out[0] if isinstance(out, tuple) else out)
    finally:
        for h in handles:
            h.remove()
    return meters, torch.cat(outs)


def _rows(value, start: int, size: int, batch: int):
    """A keyword argument cut to the batch rows [start, start + size) where it has them."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch > 1:
        return value[start:start + size]
    if isinstance(value, tuple):
        return tuple(_rows(v, start, size, batch) for v in value)
    return value


def input_factors(model: nn.Module, ids: torch.Tensor, *, batch_size: int = 16,
                  show_progress: bool = False) -> list[dict[str, torch.Tensor]]:
    """Per layer, L with L Lᵀ = E[x xᵀ] of the input of each projection, by the short name of
    the module that reads it ("q" for q/k/v, "gate" for gate/up, "o", "down")."""
    full = dict.fromkeys(("q", "gate", "o", "down"), True)
    return [{k: cholesky_factor(v.mean()) for k, v in m.items()}
            for m in _moments(model, ids, full, batch_size, show_progress)]
