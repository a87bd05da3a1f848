"""Channel groups: one channel space and every tensor axis it indexes.

A slot names one tensor axis by (module name, parameter/buffer name, axis), so the
same group description applies to the model it was found on and to any deepcopy of
it (names are stable). Methods decide per group; `tuneless.reduce` rewrites the slots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

PRODUCER = "producer"  # writes the channels: rows (axis 0) of conv/linear weights, biases
NORM = "norm"  # per-channel params/buffers on the channel space (BN, LN, GN, layer scales)
CONSUMER = "consumer"  # reads the channels: input axis (axis 1) of the next conv/linear
KINDS = (PRODUCER, NORM, CONSUMER)

# Where slots find their tensors: a model, or a mapping "module.param" -> tensor (one layer
# of a checkpoint streamed from disk; the names are the state-dict keys either way).
Source = nn.Module | Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Slot:
    """One tensor axis indexed by a group's channels.

    The group's n channels occupy entries [offset*block, (offset+n)*block) of `axis`;
    `block` > 1 only for a linear that reads a flattened feature map (one channel =
    `block` consecutive columns). `producer` (norm slots) is the conv/linear that feeds
    the norm directly, or None; `relu_producer` the one that feeds it through a ReLU or
    LeakyReLU (a norm after the activation, as Keras-style networks put it). `depthwise`
    marks a depthwise conv's rows: it both reads and writes this group, so its `groups`
    attribute follows the channel count. `groups`
    > 1 marks a grouped conv's input axis: output block b of its rows reads only the
    group's b-th block of n/groups channels, which `axis` holds side by side (n/groups
    entries), so the group's channel blocks must shrink alike (ChannelGroup.blocks).
    """

    kind: str
    module: str
    param: str
    axis: int
    offset: int = 0
    block: int = 1
    producer: str | None = None
    relu_producer: str | None = None
    depthwise: bool = False
    groups: int = 1

    @property
    def key(self) -> str:
        """The state-dict key of the tensor ("module.param")."""
        return f"{self.module}.{self.param}" if self.module else self.param

    def tensor(self, source: Source) -> torch.Tensor:
        """The full tensor this slot lives in (a parameter or buffer of a model, or an entry
        of a name → tensor mapping)."""
        if not isinstance(source, nn.Module):
            return source[self.key]
        owner = source.get_submodule(self.module) if self.module else source
        return getattr(owner, self.param)

    def channel_rows(self, source: Source, n: int) -> torch.Tensor:
        """An (n, d) view-copy: row i = everything this slot holds for channel i."""
        t = self.tensor(source).detach()
        if self.groups > 1:  # (out, n/G, ...) -> (n, out/G · ...): each channel's block rows
            g, rest = self.groups, t.shape[2:]
            t = t.reshape(g, t.shape[0] // g, n // g, *rest).movedim(2, 1)
            return t.reshape(n, -1)
        t = t.narrow(self.axis, self.offset * self.block, n * self.block)
        t = t.movedim(self.axis, 0)
        if self.block > 1:  # (n*block, rest...) -> (n, block, rest...)
            t = t.reshape(n, self.block, *t.shape[1:])
        return t.reshape(n, -1)


@dataclass
class ChannelGroup:
    """A set of coupled tensor axes that must shrink together.

    `fixed` groups are never reduced; `reasons` say which op fixed them and why. `blocks`
    > 1: a grouped conv reads the channels in that many consecutive blocks, so a reduction
    keeps the same count in every block and merges channels only within one (counts are
    multiples of `blocks`: `step`).
    """

    id: int
    n: int
    slots: list[Slot] = field(default_factory=list)
    fixed: bool = False
    reasons: list[str] = field(default_factory=list)
    blocks: int = 1

    def step(self, round_to: int = 1) -> int:
        """The granularity of this group's channel counts."""
        return math.lcm(round_to, self.blocks)

    def lowest(self, min_channels: int = 1) -> int:
        """The fewest channels this group may keep (at least min_channels, whole blocks)."""
        return min(self.n, -(-max(min_channels, 1) // self.blocks) * self.blocks)

    @property
    def producers(self) -> list[Slot]:
        return [s for s in self.slots if s.kind == PRODUCER]

    @property
    def norms(self) -> list[Slot]:
        return [s for s in self.slots if s.kind == NORM]

    @property
    def consumers(self) -> list[Slot]:
        return [s for s in self.slots if s.kind == CONSUMER]

    @property
    def reducible(self) -> bool:
        return (not self.fixed and bool(self.producers) and bool(self.consumers)
                and self.n > self.blocks)

    @property
    def modules(self) -> set[str]:
        """Names of the modules whose tensors this group's channels index (what a fold or
        prune of it alone rewrites)."""
        return {s.module for s in self.slots}

    @property
    def stream(self) -> bool:
        """Written by more than one layer (an elementwise op joins them): a residual stream."""
        return len({s.module for s in self.producers}) > 1

    def features(self, source: Source, parts: Iterable[str] = KINDS, *,
                 transform: Callable[[Slot, torch.Tensor], torch.Tensor] | None = None,
                 project: tuple[int, int] | None = None) -> torch.Tensor:
        """Per-channel feature matrix (n, d): [producer rows | norm params | consumer columns].

        `parts` selects which kinds of slot contribute, in that order. `transform(slot,
        rows)` maps each slot's (n, d_slot) rows first (activation-aware features whiten
        producer rows and scale consumer columns). `project=(dim, seed)` returns the
        features times a seeded Gaussian (d × dim)/√dim, built slot by slot so that the
        full-width matrix of a very wide group never exists (Johnson–Lindenstrauss).
        """
        parts = tuple(parts)
        gen = None if project is None else torch.Generator().manual_seed(project[1])
        out = []
        for kind in parts:
            for s in self.slots:
                if s.kind != kind:
                    continue
                rows = s.channel_rows(source, self.n).float()
                if transform is not None:
                    rows = transform(s, rows)
                if gen is not None:
                    dim = project[0]
                    rows = rows @ (torch.randn(rows.shape[1], dim, generator=gen) / dim**0.5)
                    out = [rows] if not out else [out[0] + rows]
                else:
                    out.append(rows)
        if not out:
            return torch.zeros(self.n, 0)
        return torch.cat(out, dim=1)

    def describe(self) -> str:
        names = sorted({s.module for s in self.producers})
        head = ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
        state = "FIXED: " + "; ".join(self.reasons) if self.fixed else "reducible" + (
            f" in {self.blocks} equal blocks (grouped conv)" if self.blocks > 1 else "")
        return f"group {self.id}: {self.n} channels, producers [{head}] — {state}"


@dataclass
class GroupGraph:
    """All channel groups of a model, found from one example input by `find_groups`."""

    groups: list[ChannelGroup]
    model_name: str = ""

    def __iter__(self) -> Iterator[ChannelGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, gid: int) -> ChannelGroup:
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(gid)

    @property
    def reducible(self) -> list[ChannelGroup]:
        """Groups a method may shrink (not fixed, with producers and consumers)."""
        return [g for g in self.groups if g.reducible]

    @property
    def fixed(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.fixed]

    def slots(self) -> Iterator[tuple[ChannelGroup, Slot]]:
        """Every (group, slot) pair, for methods that compute their own features."""
        for g in self.groups:
            for s in g.slots:
                yield g, s

    def features(self, model: nn.Module, gid: int, parts: Iterable[str] = KINDS) -> torch.Tensor:
        return self[gid].features(model, parts)

    def summary(self) -> str:
        lines = [g.describe() for g in self.groups]
        n_red = len(self.reducible)
        lines.append(f"{len(self.groups)} groups, {n_red} reducible, {len(self.fixed)} fixed")
        return "\n".join(lines)
