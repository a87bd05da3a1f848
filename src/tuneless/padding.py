"""Zero channels appended to a compressed model so that its widths are whole multiples.

Some runtimes have fast kernels only for channel counts that are multiples of their
vector width: ONNX Runtime's CPU convolutions run a ResNet-20 of widths 11/22/45 (48% of
the FLOPs) 1.2× *slower* than the dense 16/32/64 (docs/getting-started.md). Padding the
folded widths with zero channels at export keeps the fold's exact widths and accuracy and
hands the runtime counts it runs fast, at the cost of the zeros' arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from tuneless.errors import TunelessError


def padding_plan(graph, multiple: int) -> dict[int, tuple[int, int]]:
    """{group id: (channels, padded channels)} for every reducible group whose count is
    not a multiple; groups a grouped convolution reads (blocks > 1) are left as they are."""
    if not isinstance(multiple, int) or multiple < 1:
        raise TunelessError(f"pad_to must be a positive integer, got {multiple!r}")
    plan = {}
    for g in graph.reducible:
        if g.blocks == 1 and g.n % multiple:
            plan[g.id] = (g.n, -(-g.n // multiple) * multiple)
    return plan


def pad_channels(model: nn.Module, example_inputs, multiple: int = 8, graph=None
                 ) -> tuple[nn.Module, dict[int, tuple[int, int]]]:
    """A copy of `model` whose reducible channel groups are padded with zero channels up to
    a multiple of `multiple` (producers get zero rows, norms zero scale and shift,
    consumers zero columns): the same function, other widths. Returns the model and
    {group id: (channels, padded)}. graph: the model's channel groups, when already traced."""
    from tuneless.decisions import selection
    from tuneless.graph import find_groups
    from tuneless.reduce import reduce

    graph = find_groups(model, example_inputs) if graph is None else graph
    plan = padding_plan(graph, multiple)
    if not plan:
        return model, {}
    decisions = {}
    for gid, (n, padded) in plan.items():  # the inverse of pruning the appended channels:
        m, u = selection(torch.arange(n), padded)  # its (M, U) swapped
        decisions[gid] = (u, m)
    return reduce(model, graph, decisions), plan


__all__ = ["pad_channels", "padding_plan"]
