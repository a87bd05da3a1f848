"""Where a tensor keeps its channels: which dimension, and which groups lie along it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """Channels live on tensor dimension `dim`, as consecutive segments of groups.

    `segs` is ((group id, n), ...) in order along `dim` (a concat has several); `block`
    is the number of consecutive entries per channel once spatial dims were flattened
    into the channel dim (channel-major, as torch.flatten does).
    """

    dim: int
    segs: tuple[tuple[int, int], ...]
    block: int = 1

    @property
    def channels(self) -> int:
        return sum(n for _, n in self.segs)

    @property
    def size(self) -> int:
        """Length of `dim` in the tensor."""
        return self.channels * self.block

    def with_dim(self, dim: int) -> Layout:
        return Layout(dim, self.segs, self.block)

    def gids(self) -> list[int]:
        return [g for g, _ in self.segs]
