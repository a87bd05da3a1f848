"""Channel-group engine: which tensor axes of a model share one channel space.

    graph = find_groups(model, torch.randn(1, 3, 32, 32))
    for g in graph.reducible: ...            # ChannelGroup: id, n, slots, fixed, reasons
    feats = g.features(model)                # (n, d): [producer rows | norm | consumer cols]
    small = tuneless.reduce(model, graph, {g.id: (M, U)})

See docs/engine-api.md.
"""

from tuneless.graph.discover import find_groups
from tuneless.graph.groups import CONSUMER, KINDS, NORM, PRODUCER, ChannelGroup, GroupGraph, Slot

__all__ = [
    "CONSUMER", "KINDS", "NORM", "PRODUCER", "ChannelGroup", "GroupGraph", "Slot", "find_groups",
]
