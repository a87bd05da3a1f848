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


@torch.no_grad()
def match_bn_layers(original: nn.Module, small: nn.Module, graph, maps: dict, data, *,
                    num_images: int | None = None, batch_size: int = 128,
                    inplace: bool = False) -> nn.Module:
    """Match every BatchNorm right after a conv/linear of `small` to `original` on data.

    graph: the channel groups of `original`; maps: {group id: (k × n)} the small model's
    channels in the original's (tuneless.layer_refit.channel_maps_from_*). A BatchNorm whose
    channels cannot be mapped keeps its parameters and is only re-estimated.
    """
    from tuneless.layer_refit import _layout, _output_map

    small = small if inplace else copy.deepcopy(small)
    outputs, norm_after = _layout(graph)
    plan = {}
    for producer, norm in norm_after.items():
        bn = small.get_submodule(norm)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not bn.affine:
            continue
        m = _output_map(producer, small.get_submodule(producer), outputs, maps)
        if m is not None and m.shape[0] == bn.num_features:
            plan[norm] = m  # rows: cluster means, selections or identity
    if not plan:
        raise TunelessError("statistics matching found no BatchNorm after a conv or linear")
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
