"""Union-find over channel spaces, collecting slots and the reasons a space is fixed.

A space can also be split into consecutive parts when an element-wise op meets it laid
out in finer segments than it was created with (a zero-padding shortcut adds a stage's
stream to [previous stream | zero channels]): slots recorded on the whole space are
shared out to its parts when the groups are resolved.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from tuneless.graph.groups import ChannelGroup, Slot
from tuneless.graph.layout import Layout


class GroupBuilder:
    """Creates channel spaces, joins them (residual add, gating) and fixes them (with reasons)."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._n: list[int] = []
        self._slots: dict[int, list[Slot]] = defaultdict(list)
        self._reasons: dict[int, list[str]] = defaultdict(list)
        self._split: dict[int, list[tuple[int, int]]] = {}  # root -> its consecutive parts
        self._blocks: dict[int, int] = {}  # root -> the grouped-conv blocks it is read in

    def new(self, n: int, reason: str | None = None) -> int:
        gid = len(self._parent)
        self._parent.append(gid)
        self._n.append(n)
        if reason:
            self.fix([gid], reason)
        return gid

    def find(self, g: int) -> int:
        while self._parent[g] != g:
            self._parent[g] = self._parent[self._parent[g]]
            g = self._parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self._n[ra] != self._n[rb]:  # cannot happen for well-formed models; stay safe
            sizes = f"{self._n[ra]} vs {self._n[rb]}"
            self.fix([ra, rb], f"joined channel spaces of different sizes ({sizes})")
        self._parent[rb] = ra
        for why in self._reasons.pop(rb, []):  # a root holds every reason of its members
            if why not in self._reasons[ra]:
                self._reasons[ra].append(why)
        if rb in self._blocks:
            self.require_blocks(ra, self._blocks.pop(rb), "a joined channel space")
        return ra

    def require_blocks(self, gid: int, blocks: int, where: str) -> None:
        """The space is read in `blocks` consecutive equal blocks (a grouped conv): it may
        only shrink block by block. Two different block counts, or a space already split
        into parts, fix it."""
        parts = self.parts(gid)
        r = parts[0][0]
        if len(parts) > 1 or self._blocks.get(r, blocks) != blocks:
            self.fix([gid], f"{where} reads its channels in {blocks} blocks that other "
                            "ops cut differently")
            return
        self._blocks[r] = blocks

    def fix(self, gids, reason: str) -> None:
        for g in gids:
            for r, _ in self.parts(g):
                if reason not in self._reasons[r]:
                    self._reasons[r].append(reason)

    def parts(self, gid: int) -> list[tuple[int, int]]:
        """The space as its finest consecutive parts, [(root id, channels), ...]."""
        r = self.find(gid)
        if r not in self._split:
            return [(r, self._n[r])]
        return [p for g, _ in self._split[r] for p in self.parts(g)]

    def _cut(self, parts: list[tuple[int, int]], cuts: set[int]) -> list[tuple[int, int]]:
        """Split the parts that straddle a cut position (channel offsets along the layout)."""
        out, pos = [], 0
        for g, n in parts:
            inner = sorted(c - pos for c in cuts if pos < c < pos + n)
            if inner and g in self._blocks:
                self.fix([g], "a channel space read in grouped-conv blocks is split by a "
                              "zero-padding shortcut")
            if inner:
                sizes = [b - a for a, b in zip([0, *inner], [*inner, n])]
                kids = [self.new(k) for k in sizes]
                for k in kids:  # a part of a fixed space is fixed for the same reasons
                    self._reasons[k] = list(self._reasons.get(g, []))
                self._split[g] = list(zip(kids, sizes))
                out += list(zip(kids, sizes))
            else:
                out.append((g, n))
            pos += n
        return out

    def fix_layout(self, layout: Layout | None, reason: str) -> None:
        if layout is not None:
            self.fix(layout.gids(), reason)

    def add_slot(self, gid: int, slot: Slot) -> None:
        self._slots[gid].append(slot)

    def add_layout_slots(self, layout: Layout, make) -> None:
        """One slot per segment: make(gid, offset_in_channels) -> Slot."""
        off = 0
        for gid, n in layout.segs:
            self.add_slot(gid, make(gid, off))
            off += n

    def union_layouts(self, a: Layout, b: Layout, where: str) -> Layout | None:
        """Element-wise op of two channel tensors: same channel index ⇒ same group. Where
        one side is cut into finer segments than the other, the coarser space is split."""
        if a.channels == b.channels and a.block == b.block:
            pa = [p for g, _ in a.segs for p in self.parts(g)]
            pb = [p for g, _ in b.segs for p in self.parts(g)]
            cuts = set(_offsets(pa)) | set(_offsets(pb))
            # a space that appears twice on one side would need two different cuts
            twice = any(cuts != set(_offsets(p)) and len({g for g, _ in p}) < len(p)
                        for p in (pa, pb))
            if not twice:
                pa, pb = self._cut(pa, cuts), self._cut(pb, cuts)
                for (ga, _), (gb, _) in zip(pa, pb, strict=True):
                    self.union(ga, gb)
                return Layout(a.dim, tuple(pa), a.block)
        reason = f"{where} combines tensors whose channels are laid out differently"
        self.fix_layout(a, reason)
        self.fix_layout(b, reason)
        return None

    def groups(self) -> list[ChannelGroup]:
        """Resolve unions into ChannelGroups; fixed = any member was fixed."""
        roots: dict[int, ChannelGroup] = {}
        for g in range(len(self._parent)):
            r = self.find(g)
            if r in self._split:  # its slots go to its parts, at their offsets
                continue
            if r not in roots:
                roots[r] = ChannelGroup(id=r, n=self._n[r], reasons=list(self._reasons.get(r, [])),
                                        blocks=self._blocks.get(r, 1))
        for g in range(len(self._parent)):
            for s in self._slots.get(g, []):
                off = 0
                for part, n in self.parts(g):
                    moved = s if off == 0 else dataclasses.replace(s, offset=s.offset + off)
                    if moved not in roots[part].slots:
                        roots[part].slots.append(moved)
                    off += n
        out = []
        for new_id, grp in enumerate(sorted(roots.values(), key=lambda g: g.id)):
            grp.id = new_id
            grp.fixed = bool(grp.reasons)
            out.append(grp)
        _fix_shared_tensors(out)
        return out


def _offsets(parts: list[tuple[int, int]]) -> list[int]:
    """Start offsets of consecutive parts."""
    out, pos = [], 0
    for _, n in parts:
        out.append(pos)
        pos += n
    return out


def _fix_shared_tensors(groups: list[ChannelGroup]) -> None:
    """A tensor axis claimed by two groups at overlapping entries cannot be reduced safely."""
    spans: dict[tuple[str, str, int], list[tuple[int, int, ChannelGroup]]] = defaultdict(list)
    for g in groups:
        for s in g.slots:
            lo = s.offset * s.block
            spans[(s.module, s.param, s.axis)].append((lo, lo + g.n * s.block, g))
    for (module, param, _axis), items in spans.items():
        for i, (lo, hi, g) in enumerate(items):
            for lo2, hi2, g2 in items[i + 1:]:
                if g2 is not g and lo < hi2 and lo2 < hi:
                    why = f"{module}.{param} is shared by two channel spaces"
                    for x in (g, g2):
                        x.fixed = True
                        if why not in x.reasons:
                            x.reasons.append(why)
