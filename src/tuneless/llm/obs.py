"""Structured Optimal Brain Surgeon for LLM channels (ZipLM, SlimGPT's selection): the
strongest pruning baseline folding is measured against; data-free on self-generated tokens
by default.

Removing a set R of a consumer's input columns (down_proj for MLP channels, o_proj for
heads) and re-solving the kept columns by least squares on inputs with second moment H
raises the output error by tr(W_R (H⁻¹_RR)⁻¹ W_Rᵀ), H⁻¹ the inverse over the columns still
present. Greedily, the units (an MLP channel: one column; a kv group or a query head: its
o_proj columns) that cost least leave, H⁻¹ and W are updated as if the kept columns had
been re-solved, and the next ones are scored. The selection only decides which channels
stay; the kept weights are then refit by folding's least-squares repair
(tuneless.llm.refit), so on the same schedule folding and this baseline differ only in
which channels they keep or merge.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from tuneless.decisions import selection
from tuneless.errors import TunelessError
from tuneless.graph.groups import CONSUMER
from tuneless.llm.activation_stats import layer_moments
from tuneless.llm.adapters import adapter_for
from tuneless.llm.conv1d import as_linear
from tuneless.llm.engine import reduce_llm
from tuneless.llm.fold import _plans, rank_calibration_ids, repair_reduced
from tuneless.llm.plan import OBS_DEFAULTS
from tuneless.llm.refit import ReferenceTape, layer_inputs
from tuneless.modelcheck import check_model
from tuneless.options import check_call

# the first positions of each calibration sequence OBS's repair leaves out: none. Measured
# (docs/llm.md "Structured OBS", 20% of SmolLM2, seeds 0/1/2): 0 gives 45.01 / 46.49 / 48.08,
# the fold's calib_skip=1 45.81 / 47.97 / 50.22
OBS_CALIB_SKIP = 0


def obs_order(h: torch.Tensor, w: torch.Tensor, units: torch.Tensor, remove: int, *,
              block: int = 8, damp: float = 0.01) -> list[int]:
    """The first `remove` units, in the order greedy structured OBS removes them.

    h: second moment of the consumer's inputs (in × in); w: the consumer's weight (out × in);
    units: (n, c) the input columns each unit owns; block: units removed per step when a
    unit is one column (several-column units leave one at a time); damp: ridge added to h,
    relative to its mean diagonal."""
    return [u for chosen, _ in obs_steps(h, w, units, remove, block=block, damp=damp)
            for u in chosen]


@torch.no_grad()
def obs_steps(h: torch.Tensor, w: torch.Tensor, units: torch.Tensor, remove: int, *,
              block: int = 8, damp: float = 0.01) -> Iterator[tuple[list[int], float]]:
    """obs_order's steps: the units each step removes and the output error their removal
    adds (with the kept columns re-solved), until `remove` units are gone."""
    n, c = units.shape
    if not 0 <= remove < n:
        raise TunelessError(f"OBS can remove 0 to {n - 1} of {n} units, not {remove}")
    h = h.double()
    h = h + damp * float(h.diagonal().mean().clamp(min=1e-30)) * torch.eye(
        h.shape[0], dtype=h.dtype, device=h.device)
    hinv, w = torch.linalg.inv(h), w.detach().to(h.device, torch.float64).clone()
    units = units.to(h.device)
    alive = torch.ones(n, dtype=torch.bool, device=h.device)  # where the model's tensors are
    step = block if c == 1 else 1
    gone = 0
    while gone < remove:
        idx = units[alive]  # (alive, c)
        blocks = hinv[idx[:, :, None], idx[:, None, :]]  # (alive, c, c)
        wu = w[:, idx].permute(1, 0, 2)  # (alive, out, c)
        cost = (wu @ torch.linalg.inv(blocks) * wu).sum((1, 2))
        chosen = alive.nonzero().flatten()[torch.topk(cost, min(step, remove - gone),
                                                      largest=False).indices]
        cols = units[chosen].flatten()
        inv_s = torch.linalg.inv(hinv[cols][:, cols])
        added = float(((w[:, cols] @ inv_s) * w[:, cols]).sum())
        w -= w[:, cols] @ inv_s @ hinv[cols, :]
        hinv -= hinv[:, cols] @ inv_s @ hinv[cols, :]
        hinv[cols, :], hinv[:, cols], w[:, cols] = 0, 0, 0
        alive[chosen] = False
        gone += len(chosen)
        yield chosen.tolist(), added


def shrinking(shape, plan) -> dict[str, bool]:
    """The consumers whose full input second moments OBS needs in a layer going to `plan`."""
    return {short: True for short, shrinks in (("o", plan.n_q < shape.n_q),
                                               ("down", plan.n_mlp < shape.n_mlp)) if shrinks}


def obs_decisions(adapter, i: int, groups, shape, plan, moments: dict, weight_of, *,
                  block: int = 8, damp: float = 0.01) -> dict:
    """Layer i's decisions: each shrinking group keeps the units greedy structured OBS does
    not remove, on its consumer's input second moment (`moments` by short name) and weight
    (`weight_of(short)`), in memory and streamed alike."""
    out = {}
    for gid, k in adapter.kept(groups, shape, plan).items():
        g = next(g for g in groups.groups if g.id == gid)
        short, cols = _consumer(adapter, i, g)
        gone = obs_order(moments[short].mean(), weight_of(short), cols, g.n - k, block=block,
                         damp=damp)
        out[gid] = selection(sorted(set(range(g.n)) - set(gone)), g.n)
    return out


def _consumer(adapter, layer: int, group):
    """(short projection name, (n, c) input columns per unit) of a group's one consumer."""
    slots = [s for s in group.slots if s.kind == CONSUMER]
    if len(slots) != 1:
        raise TunelessError(f"OBS needs one consumer per channel group, got {len(slots)}")
    s = slots[0]
    short = next((k for k in ("down", "o") if adapter.module_name(layer, k) == s.module), None)
    if short is None:
        raise TunelessError(f"OBS: {s.module} is neither a down_proj nor an o_proj")
    start = s.offset * s.block
    cols = torch.arange(start, start + group.n * s.block).reshape(group.n, s.block)
    return short, cols


class _OriginalStream:
    """The uncompressed model's hidden states, walked forward one decoder layer at a time
    on the calibration tokens, so that only the layer being decided holds its statistics
    (one intermediate × intermediate matrix, not one per layer). Layers are asked for in
    increasing order, as reduce_llm decides them."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, skip: int = 0,
                 tape: ReferenceTape | None = None) -> None:
        self.adapter = adapter_for(model)
        self.skip, self.tape = skip, tape
        self.layers = self.adapter.layers(model)
        self.hidden, self.kwargs = layer_inputs(model, ids)
        self.at = 0

    def moments(self, i: int, full: dict[str, bool]) -> dict:
        if i < self.at:
            raise TunelessError(f"layer {i} asked for after layer {self.at - 1}")
        while self.at <= i:
            meters, self.hidden = layer_moments(
                self.adapter, self.layers[self.at], self.hidden, self.kwargs[self.at],
                full if self.at == i else {}, skip=self.skip, tape=self.tape)
            self.at += 1
        return meters

    def finish(self) -> ReferenceTape | None:
        """The tape, once the layers after the last one decided have run into it too."""
        if self.tape is not None and self.at < len(self.layers):
            self.moments(len(self.layers) - 1, {})
        return self.tape


def obs_prune_llm(model: nn.Module, sparsity: float | None = None, *, schedule=None,
                  head_ratio: float | None = None, mlp_ratio: float | None = None,
                  gqa: str = "kv-groups", repair: str | None = "self", tokenizer=None,
                  data=None, calib_samples: int = 16, calib_len: int = 128, seed: int = 0,
                  refit_lambda: float = 3.0, damp: float = 0.01, block: int = 8,
                  calib_skip: int = OBS_CALIB_SKIP, stats_skip: int = 0,
                  progress: bool | None = None) -> nn.Module:
    """Structured-OBS pruning of MLP channels and heads, then folding's repair (`repair`,
    default "self": data-free). Without a schedule or ratios the sizes come from
    "flat-mlp" (one MLP ratio in the layers the fold's paper-mlp folds; inner-mlp beyond
    its reach): measured better for OBS than paper-mlp's ramp (docs/llm.md "Structured
    OBS"; the fold's measured choice of schedule, tuneless.llm.choose, did not separate
    OBS's schedules on Gemma 3 reliably); every schedule of fold_llm applies.

    The second moments come from the repair's calibration tokens: the model's own samples
    ("self" or "none") or `data` / windows of the calibration text ("refit"), walked
    through the uncompressed model one layer at a time (memory: one float64
    intermediate × intermediate matrix at a time). stats_skip: the first positions of each
    sequence left out of them — none by default: leaving out the first (the attention sink)
    broke SmolLM2 at 20% (perplexity 109 against 45, docs/llm.md "Structured OBS");
    calib_skip: those left out of the repair — none by default, unlike the fold (OBS keeps
    the channels the first position needs, and its repair is better for seeing it)."""
    model = as_linear(check_model(model, "obs"))  # GPT-2: Conv1D as Linear
    adapter = adapter_for(model)
    check_call(obs_prune_llm, {"sparsity": sparsity, "head_ratio": head_ratio,
                               "mlp_ratio": mlp_ratio, "seed": seed,
                               "calib_samples": calib_samples, "calib_len": calib_len,
                               "refit_lambda": refit_lambda, "damp": damp, "block": block,
                               "calib_skip": calib_skip, "stats_skip": stats_skip},
                   "obs")
    if progress is None:
        from tuneless.progress import progress_enabled

        progress = progress_enabled()
    plans = _plans(model, sparsity, schedule, head_ratio, mlp_ratio, gqa, OBS_DEFAULTS)
    source = "refit" if repair == "refit" else "self"  # the tokens H is measured on
    calib = rank_calibration_ids(model, source, tokenizer, data, calib_samples, calib_len,
                                 seed, show_progress=progress)
    tape = None  # the walk for the second moments also records what the refit reads
    if repair in ("self", "refit") and ReferenceTape.fits(model, calib):
        tape = ReferenceTape.of(model, calib)
    stream = _OriginalStream(model, calib, stats_skip, tape)
    layers = adapter.layers(model)

    def decide(i, groups, shape, plan):
        moments = stream.moments(i, shrinking(shape, plan))
        return obs_decisions(adapter, i, groups, shape, plan, moments,
                             lambda short: adapter.projections(layers[i])[short].weight,
                             block=block, damp=damp)

    small = reduce_llm(model, plans, decide, gqa=gqa, desc="obs", show_progress=progress)
    return repair_reduced(model, small, repair, calib=None if repair in (None, "none", "naive")
                          else calib, refit_lambda=refit_lambda, calib_skip=calib_skip,
                          progress=progress, reference=stream.finish())
