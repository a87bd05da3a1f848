"""Pruning baselines: structured L1 / L2 / random channel pruning and unstructured magnitude.

Structured pruning removes whole channels physically (producer rows, BN entries, the
consumers' input slices) through the channel-group engine; a channel's importance is
summed over every tensor coupled to it (all producers, the norms' affine params, all
consumers). Unstructured magnitude pruning only writes zeros: the model keeps its shapes
and is NOT physically smaller; its report counts non-zero parameters.

Every function returns a new model and attaches `new_model.tuneless_report` (a dict with
the method, requested/achieved sparsity, params before/after and the per-group counts).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from tuneless.budget import LLM_RATIO, STREAM_SHARE
from tuneless.decisions import top_channels
from tuneless.errors import TunelessError, UnsupportedModelError
from tuneless.methods.preset import preset
from tuneless.modelcheck import check_model
from tuneless.options import check_call, check_names

CRITERIA = ("l1", "l2", "random")
LLM_DEFAULT_CRITERION = "obs"  # measured: docs/llm.md "Structured OBS"
_STATS = ("running_mean", "running_var", "num_batches_tracked")


def prune(model: nn.Module, sparsity: float | None = None, channel_ratio: float | None = None,
          criterion: str | None = None, example_inputs=None, min_channels: int = 1,
          round_to: int = 1, seed: int = 0, data=None, stream_share: float = STREAM_SHARE,
          allocation: str = "uniform", probe_images: int = 32, keep_floor: float | None = None,
          max_ratio: float = 0.9, budget: str = "params", **llm_options) -> nn.Module:
    """Structured pruning to `sparsity` (fraction of parameters removed; of the FLOPs of one
    example input with budget="flops") or a uniform `channel_ratio` (fraction of channels
    removed from every reducible group).
    Under a sparsity budget residual streams lose `stream_share` of the ratio the other
    groups lose (the same widths as tuneless.fold; 1 = uniform).
    allocation="sensitivity" chooses per-group widths as tuneless.fold does: each group
    pruned alone at six depths, the output's movement measured on `probe_images` of `data`
    (images) or of pink noise, then the greedy budget (tuneless.allocation; keep_floor ×
    the uniform count, by default fold's, and at most max_ratio of a group removed).

    criterion: for CNNs "l1" (the default), "l2" or "random" per channel over every coupled
    tensor; for language models "obs" by default (the best data-free result measured:
    docs/llm.md "Structured OBS").

    Language models (Hugging Face decoders): criterion "l2" / "magnitude" (data-free, L2 norm
    of every weight a head or MLP channel owns), "wanda-sp" or "flap" (tuneless.llm.flap;
    both need data= token-id batches or tokenizer=), "obs" (structured OBS with folding's
    repair, tuneless.llm.obs; data-free on self-generated tokens by default); sparsity is
    the fraction of decoder-block parameters, and llm_options (schedule, head_ratio, mlp_ratio, gqa,
    tokenizer, ...) go to tuneless.llm.
    """
    from tuneless.allocation import check_allocation
    from tuneless.budget import budget_for_ratio, budget_of, check_budget, cost_weights, solve
    from tuneless.graph import find_groups
    from tuneless.llm.adapters import is_hf_causal_lm
    from tuneless.materialize import materialize_weights, materialized_report
    from tuneless.modelio import example_input
    from tuneless.reduce import check_reduced, reduce

    if is_hf_causal_lm(model):
        if budget != "params":
            from tuneless.budget import LLM_BUDGET

            raise TunelessError(LLM_BUDGET)
        return _prune_llm(model, sparsity, channel_ratio, criterion or LLM_DEFAULT_CRITERION,
                          data, seed, llm_options)
    criterion = criterion or "l1"
    check_names(llm_options, (), "prune", suggest=prune)
    check_model(model, f"prune-{criterion}")
    check_call(prune, {"min_channels": min_channels, "round_to": round_to, "seed": seed,
                       "stream_share": stream_share}, f"prune-{criterion}")
    check_allocation(allocation, ("uniform", "sensitivity"), round_to=round_to,
                     probe_images=probe_images, keep_floor=keep_floor, max_ratio=max_ratio)
    check_budget(budget)
    if criterion not in CRITERIA:
        raise TunelessError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if (sparsity is None) == (channel_ratio is None):
        raise TunelessError("give exactly one of sparsity or channel_ratio")
    x = example_inputs if example_inputs is not None else example_input(model)
    model = materialize_weights(model, x)  # weight-standardised convs as plain ones
    graph = find_groups(model, x)
    if not graph.reducible:
        raise UnsupportedModelError(_nothing_reducible(model, graph))
    weights = cost_weights(model, x, budget)  # None: a parameter budget
    if sparsity is not None:
        plan = solve(model, graph, sparsity, min_channels, round_to, stream_share, weights)
    else:
        plan = budget_for_ratio(model, graph, channel_ratio, min_channels, round_to, weights)
    gen = torch.Generator().manual_seed(seed)
    kept, order = plan.kept, {}
    if allocation == "sensitivity":  # every group's order first: each is probed at 6 depths
        order = {g.id: channel_importance(model, g, criterion, gen) for g in graph.reducible}
        kept = _sensitivity_kept(model, graph, order, x, data, sparsity, channel_ratio,
                                 probe_images, seed, keep_floor, max_ratio, min_channels,
                                 stream_share, weights)
        plan = budget_of(model, graph, kept, weights)
    decisions = {}
    for g in graph.reducible:
        k = kept[g.id]
        if k == g.n:  # every group is rewritten, even at k = n (exercises the engine)
            decisions[g.id] = torch.arange(g.n)
        else:  # uniform: the importance drawn only where it is used (random's seed stream)
            score = order[g.id] if order else channel_importance(model, g, criterion, gen)
            decisions[g.id] = top_channels(score, k, g.blocks)
    new = reduce(model, graph, decisions)
    check_reduced(new, x, "pruned")
    new.tuneless_report = {
        "method": f"prune-{criterion}", "requested_sparsity": sparsity,
        "channel_ratio": plan.channel_ratio, **plan.report(),
        "options": {"criterion": criterion, "min_channels": min_channels,
                    "round_to": round_to, "seed": seed, "stream_share": stream_share,
                    "allocation": allocation, "budget": budget},
        "physically_smaller": True, "groups": len(graph),
        "reducible_groups": len(graph.reducible),
        "kept": {str(k): v for k, v in plan.kept.items()},
        "channels": {str(gid): keep.tolist() for gid, keep in decisions.items()},
        **materialized_report(model),
    }
    return new


def _sensitivity_kept(model, graph, order, x, data, sparsity, channel_ratio, probe_images,
                      seed, keep_floor, max_ratio, min_channels, stream_share,
                      weights) -> dict:
    """Per-group kept counts from the measured damage of pruning each group alone."""
    from tuneless.allocation import KEEP_FLOOR, OutputDamage, measured_widths
    from tuneless.reduce import reduce

    measure = OutputDamage(model, x, probe_images, seed, data)
    if keep_floor is None:
        keep_floor = KEEP_FLOOR["sensitivity"]

    def damage(gid: int, k: int) -> float:
        keep = top_channels(order[gid], k, graph[gid].blocks)
        return measure(reduce(model, graph, {gid: keep}, share=True), graph[gid].modules)

    return measured_widths(model, graph, damage, sparsity, channel_ratio,
                           keep_floor=keep_floor, max_ratio=max_ratio,
                           min_channels=min_channels, stream_share=stream_share,
                           weights=weights, order=lambda gid: measure.start(graph[gid].modules))


LLM_CRITERIA = ("l2", "magnitude", "wanda-sp", "flap", "obs")


def _prune_llm(model, sparsity, channel_ratio, criterion, data, seed, options) -> nn.Module:
    from tuneless.llm import flap_llm, magnitude_prune_llm, obs_prune_llm, wanda_sp_llm

    if channel_ratio is not None:
        raise TunelessError(LLM_RATIO)
    if criterion in ("l2", "magnitude"):
        if data is not None:
            raise TunelessError(f"criterion {criterion!r} is data-free; data= is not used")
        check_names(options, magnitude_prune_llm, f"prune-{criterion}", suggest=prune)
        return magnitude_prune_llm(model, sparsity, seed=seed, **options)
    if criterion in ("wanda-sp", "flap"):
        batches = None if data is None else list(data) if isinstance(data, list | tuple) \
            else [torch.as_tensor(data)]
        func = wanda_sp_llm if criterion == "wanda-sp" else flap_llm
        check_names(options, func, f"prune-{criterion}",
                    set_by_call={"batches": "data= (a list of token-id batches)"},
                    suggest=prune)
        return func(model, sparsity, batches=batches, seed=seed, **options)
    if criterion == "obs":
        check_names(options, obs_prune_llm, "prune-obs", suggest=prune)
        return obs_prune_llm(model, sparsity, data=data, seed=seed, **options)
    raise TunelessError(f"criterion {criterion!r} does not apply to language models; choose "
                        f"one of {', '.join(LLM_CRITERIA)}")


def channel_importance(model: nn.Module, group, criterion: str,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Score per channel: L1 = Σ|w|, L2 = ‖w‖₂ over all coupled tensors (stats excluded)."""
    if criterion == "random":
        return torch.rand(group.n, generator=generator)
    score = torch.zeros(group.n, dtype=torch.float64)
    for s in group.slots:
        if s.param in _STATS:
            continue
        t = s.tensor(model).detach()
        if s.groups > 1:  # (out, n/G, ...) as (G, out/G, n/G, ...): block b reads channels b
            t = t.reshape(s.groups, t.shape[0] // s.groups, *t.shape[1:])
            keep = (0, 2)
        else:
            t = t.narrow(s.axis, s.offset * s.block, group.n * s.block)
            keep = (s.axis,)
        other = [d for d in range(t.dim()) if d not in keep]
        per = t.abs() if criterion == "l1" else t.float().pow(2)
        per = per.sum(dim=other) if other else per
        score += per.double().reshape(group.n, s.block).sum(1)
    return score if criterion == "l1" else score.sqrt()


def _nothing_reducible(model: nn.Module, graph) -> str:
    reasons = []
    for g in graph.fixed:
        reasons += [r for r in g.reasons if r not in reasons and "network" not in r]
    why = "; ".join(reasons[:3]) or "no channel has both a producer and a consumer"
    return f"nothing to reduce in {type(model).__name__}: every channel group is fixed ({why})"


def _preset(criterion: str):
    return preset(prune, f"prune_{criterion}",
                  f"Structured {criterion} channel pruning (see `prune`).", criterion=criterion)


prune_l1 = _preset("l1")
prune_l2 = _preset("l2")
prune_random = _preset("random")


@torch.no_grad()
def magnitude_prune(model: nn.Module, *, example_inputs=None, sparsity: float | None = None,
                    channel_ratio: float | None = None, scope: str = "global",
                    **options) -> nn.Module:
    """Unstructured magnitude pruning: zero the smallest |w| of conv/linear weights.

    NOT physically smaller: shapes are unchanged and zeros are stored; the report counts
    non-zeros. `sparsity` is the fraction of ALL parameters set to zero; scope "global"
    uses one threshold over all weights, "layer" zeros the same fraction in every layer.
    """
    check_model(model, "magnitude")
    if channel_ratio is not None:
        raise TunelessError("magnitude pruning is unstructured: give sparsity, not channel_ratio")
    if options:
        raise TunelessError(f"unknown option(s) for magnitude pruning: {', '.join(options)}")
    if sparsity is None or not 0.0 <= sparsity < 1.0:
        raise TunelessError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("global", "layer"):
        raise TunelessError(f"scope must be 'global' or 'layer', got {scope!r}")
    new = copy.deepcopy(model)
    weights = [m.weight for m in new.modules()
               if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]
    total = sum(p.numel() for p in new.parameters())
    prunable = sum(w.numel() for w in weights)
    target = int(round(sparsity * total))
    if target > prunable:
        raise TunelessError(f"sparsity {sparsity} needs {target} zeros but conv/linear weights "
                            f"hold only {prunable} of {total} parameters")
    if scope == "global" and target > 0:
        flat = torch.cat([w.detach().abs().flatten() for w in weights])
        drop = torch.topk(flat, target, largest=False).indices
        mask = torch.ones_like(flat, dtype=torch.bool)
        mask[drop] = False
        pos = 0
        for w in weights:
            w.mul_(mask[pos:pos + w.numel()].view_as(w))
            pos += w.numel()
    elif target > 0:
        frac = target / prunable
        for w in weights:
            n = int(round(frac * w.numel()))
            if n:
                idx = torch.topk(w.detach().abs().flatten(), n, largest=False).indices
                w.view(-1)[idx] = 0.0
    nonzero = sum(int((p != 0).sum()) for p in new.parameters())
    nonzero_before = sum(int((p != 0).sum()) for p in model.parameters())
    new.tuneless_report = {
        "method": f"magnitude-{scope}", "requested_sparsity": sparsity, "options": {"scope": scope},
        "achieved_sparsity": 1 - nonzero / total, "params_before": nonzero_before,
        "params_after": nonzero, "physically_smaller": False,
        "note": "unstructured: zeros are stored, the model is not physically smaller",
    }
    return new
