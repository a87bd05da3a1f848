"""Statistics matching (REPAIR, Jordan et al. 2023, applied to one network and its
compressed copy): every BatchNorm of the compressed model is given the *uncompressed*
model's per-channel output mean and standard deviation measured on the same images
(for a merged channel, the mean over its cluster), then its running statistics are
re-estimated on those images.

Plain BN re-estimation (Fold-R) normalises every layer to the statistics the network
was *trained* to produce; when the user's images differ from the training distribution
it moves every BatchNorm, the untouched ones too, away from what the original computes on
them. Matching aims at what the original network does on the images given, so an
unchanged channel stays unchanged on any data.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from tuneless.bn_stats import output_statistics, reestimate_bn
from tuneless.errors import TunelessError
from tuneless.graph.trace import is_plain_batchnorm


@torch.no_grad()
def match_bn_layers(original: nn.Module, small: nn.Module, graph, maps: dict, data, *,
                    num_images: int | None = None, batch_size: int = 128,
                    inplace: bool = False) -> nn.Module:
    """Match every affine BatchNorm of `small` to `original` on data, then re-estimate.

    graph: the channel groups of `original`; maps: {group id: (k × n)} the small model's
    channels in the original's (tuneless.layer_refit.channel_maps_from_*). A BatchNorm's
    channels map through the groups it belongs to, wherever it sits (after a conv, or on a
    residual stream as in pre-activation networks); one the graph does not place keeps the
    original's channels if its width is unchanged, otherwise its parameters (and is only
    re-estimated).
    """
    from tuneless.layer_refit import channel_map, channel_spans

    small = small if inplace else copy.deepcopy(small)
    spans = channel_spans(graph, "norm")
    twins = dict(original.named_modules())
    plan = {}
    for name, bn in small.named_modules():
        if not is_plain_batchnorm(bn) or not bn.affine:  # its output: the affine map only
            continue
        if name in spans:
            m = channel_map(name, bn, spans, maps)
        else:
            same = getattr(twins.get(name), "num_features", None) == bn.num_features
            m = torch.eye(bn.num_features) if same else None
        if m is not None and m.shape[0] == bn.num_features:
            plan[name] = m  # rows: cluster means, selections or identity
    if not plan:
        raise TunelessError("statistics matching found no BatchNorm whose channels it can map")
    mean, std = output_statistics(original, list(plan), data, num_images, batch_size)
    for norm, m in plan.items():
        bn = small.get_submodule(norm)
        bn.bias.copy_((m @ mean[norm]).to(bn.bias.dtype))
        bn.weight.copy_(torch.sign(bn.weight) * (m @ std[norm]).to(bn.weight.dtype))
    return reestimate_bn(small, data, num_images=num_images, batch_size=batch_size,
                         inplace=True)


def match_bn(original: nn.Module, small: nn.Module, data, *, example_inputs=None,
             **options) -> nn.Module:
    """Statistics matching for a model that tuneless folded or structurally pruned from
    `original` (the channel maps come from `small.tuneless_report`, as for tuneless.refit);
    options: num_images, batch_size, inplace."""
    from tuneless.layer_refit import maps_from_report

    graph, maps = maps_from_report(original, small, example_inputs)
    return match_bn_layers(original, small, graph, maps, data, **options)
