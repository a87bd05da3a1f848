"""Union-find over channel spaces, collecting slots and the reasons a space is fixed."""

from __future__ import annotations

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
        return ra

    def fix(self, gids, reason: str) -> None:
        for g in gids:
            r = self.find(g)
            if reason not in self._reasons[r]:
                self._reasons[r].append(reason)

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
        """Element-wise op of two channel tensors: same channel index ⇒ same group."""
        if [n for _, n in a.segs] == [n for _, n in b.segs] and a.block == b.block:
            for (ga, _), (gb, _) in zip(a.segs, b.segs):
                self.union(ga, gb)
            return a
        reason = f"{where} combines tensors whose channels are laid out differently"
        self.fix_layout(a, reason)
        self.fix_layout(b, reason)
        return None

    def groups(self) -> list[ChannelGroup]:
        """Resolve unions into ChannelGroups; fixed = any member was fixed."""
        roots: dict[int, ChannelGroup] = {}
        for g in range(len(self._parent)):
            r = self.find(g)
            grp = roots.setdefault(r, ChannelGroup(id=r, n=self._n[r]))
            for s in self._slots.get(g, []):
                if s not in grp.slots:
                    grp.slots.append(s)
            for why in self._reasons.get(g, []):
                if why not in grp.reasons:
                    grp.reasons.append(why)
        out = []
        for new_id, grp in enumerate(sorted(roots.values(), key=lambda g: g.id)):
            grp.id = new_id
            grp.fixed = bool(grp.reasons)
            out.append(grp)
        _fix_shared_tensors(out)
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
