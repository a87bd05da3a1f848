"""k-means for LLM channels and heads, on top of the package's clusterer (tuneless.cluster).

Folding minimises ||W - C W||² over cluster assignments, which is exactly the
k-means objective on the channels' feature vectors (METHODS.md §1.2). What this
adds for LLMs is an optional random projection of very wide features, which keeps
multi-billion-parameter layers tractable on a CPU.
"""

from __future__ import annotations

import torch

from tuneless.cluster import kmeans as _kmeans


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    n_init: int = 1,
    refine: bool = True,
    max_iter: int = 100,
    dim: int | None = None,
) -> torch.Tensor:
    """Labels 0..k-1 (all used) clustering the rows of x.

    dim: cluster a seeded Gaussian projection of the rows to `dim` features
    (Johnson–Lindenstrauss: squared distances kept within a small factor) when
    the rows are wider than that.
    """
    x = x.detach().to(torch.float32)
    n = x.shape[0]
    if k == n:
        return torch.arange(n)
    if dim is not None and x.shape[1] > dim:
        gen = torch.Generator().manual_seed(seed)
        x = x @ (torch.randn(x.shape[1], dim, generator=gen) / dim**0.5)
    if k == 1:
        return torch.zeros(n, dtype=torch.long)
    labels = _kmeans(x, k, seed=seed, n_init=n_init, refine=refine, max_iter=max_iter).labels
    return _fill_empty(labels, k)


def _fill_empty(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Renumber to 0..used-1 and, if duplicate points left clusters empty, split singletons
    off the largest clusters so that exactly k clusters exist (size bookkeeping needs it)."""
    _, out = torch.unique(labels, return_inverse=True)
    for new in range(int(out.max()) + 1, k):
        big = int(torch.bincount(out, minlength=k).argmax())
        out[torch.nonzero(out == big)[-1]] = new
    return out


def assignment_matrices(labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, U) of a clustering: U (n×k) one-hot, M = D⁻¹Uᵀ (k×n) the cluster mean."""
    n = labels.shape[0]
    u = torch.zeros(n, k)
    u[torch.arange(n), labels] = 1.0
    m = (u.T / u.sum(0)[:, None]).contiguous()
    return m, u
