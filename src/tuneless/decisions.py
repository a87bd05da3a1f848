"""What a method decides per channel group: a producer map M (k×n) and a consumer map U (n×k).

Every structured method is one of two shapes of (M, U), so all of them share these
constructors and `tuneless.reduce` applies either:
- pruning keeps channels: M = rows of the identity, U = Mᵀ (`selection`);
- folding merges clusters: U = the 0/1 assignment (cluster sums for consumers) and
  M = D⁻¹Uᵀ (cluster means for producers) (`merge`).
"""

from __future__ import annotations

import torch

from tuneless.errors import TunelessError


class Merge:
    """A fold's decision kept as cluster labels: the (M, U) of `merge(labels, k)`, built
    only when asked (`tuneless.reduce` rewrites tensors from the labels directly). The
    dense k×n pairs of every group cost 2.9 GiB on regnet_y_128gf at 30%. Unpacks like
    the pair: `M, U = decision`."""

    def __init__(self, labels: torch.Tensor, k: int | None = None) -> None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        self.k = int(labels.max()) + 1 if k is None else int(k)
        sizes = torch.bincount(labels, minlength=self.k)
        if len(sizes) != self.k or bool((sizes == 0).any()) or bool((labels < 0).any()):
            raise TunelessError(f"cluster labels must use each of {self.k} clusters")
        self.labels, self.sizes = labels, sizes

    @property
    def M(self) -> torch.Tensor:
        return merge(self.labels, self.k)[0]

    def __iter__(self):
        return iter(merge(self.labels, self.k))

    def __len__(self) -> int:
        return 2


Decision = tuple[torch.Tensor, torch.Tensor] | Merge | torch.Tensor  # (M, U), labels, kept


def kept_indices(keep, n: int) -> torch.Tensor:
    """Sorted, validated indices of the channels to keep in an n-channel group."""
    idx = torch.as_tensor(keep, dtype=torch.long).reshape(-1).sort().values
    if len(idx) == 0 or len(torch.unique(idx)) != len(idx) or idx[0] < 0 or idx[-1] >= n:
        raise TunelessError(f"invalid channel selection for a group of {n} channels")
    return idx


def selection(keep: torch.Tensor | list[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, U) that keep the listed channels (sorted) of an n-channel group: pruning."""
    idx = kept_indices(keep, n)
    M = torch.zeros(len(idx), n)
    M[torch.arange(len(idx)), idx] = 1.0
    return M, M.t().contiguous()


def merge(labels: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, U) of a clustering with labels in [0, k): U one-hot (n×k), M = D⁻¹Uᵀ the means."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    k = int(labels.max()) + 1 if k is None else k
    U = torch.zeros(len(labels), k)
    U[torch.arange(len(labels)), labels] = 1.0
    sizes = U.sum(0)
    if bool((sizes == 0).any()):
        raise TunelessError(f"cluster labels leave {int((sizes == 0).sum())} of {k} clusters "
                            "empty")
    return (U.t() / sizes.unsqueeze(1)).contiguous(), U


def top_channels(score: torch.Tensor, k: int, blocks: int = 1) -> torch.Tensor:
    """Indices of the k highest-scoring channels (pruning's choice); blocks > 1: the k/blocks
    best of each of that many consecutive blocks (a group a grouped conv reads)."""
    if blocks == 1:
        return torch.topk(score, k).indices
    n = len(score)
    if n % blocks or k % blocks:
        raise TunelessError(f"cannot keep {k} of {n} channels read in {blocks} grouped-conv "
                            f"blocks (a multiple of {blocks} is needed)")
    nb, kb = n // blocks, k // blocks
    return torch.cat([torch.topk(score[b * nb:(b + 1) * nb], kb).indices + b * nb
                      for b in range(blocks)])
