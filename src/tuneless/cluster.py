"""Cluster the channels of one group: fast seeded k-means in torch, plus Ward and greedy pairing.

Folding replaces W by C·W with C the projection onto cluster means, and ||W − C·W||²
is exactly the k-means objective on the channels' feature rows; so the quality of
a fold is the inertia returned here. k-means runs all restarts as one batch,
seeds with greedy k-means++, and finishes with Hartigan single-point moves, which
only ever lower the objective that Lloyd's iterations stop at.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tuneless.errors import TunelessError

CLUSTERERS: dict[str, Callable[..., Clustering]] = {}  # filled by register_clusterer below
_BATCHED_HARTIGAN = 2**25  # restarts × n × k × dims up to which Hartigan runs batched
_PAIRWISE_MAX_N = 8192  # precompute the n×n distance matrix for seeding up to this size
_CHOLESKY_MIN_N = 1024  # embed: Cholesky instead of eigh from this many channels
_GRAM_MAX_N = 8192  # Hartigan keeps an n×n Gram matrix for rank-one updates up to this size
_REFRESH = 256  # Hartigan rounds between exact recomputations of the centroid inner products
_BATCH_ELEMENTS = 2**26  # restarts × n × k distance entries computed at once


@dataclass
class Clustering:
    """labels (n,) in [0, k), numbered by each cluster's first member; centroids (k, d)."""

    labels: torch.Tensor
    centroids: torch.Tensor
    inertia: float

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    def sizes(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.k)

    def assignment(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """U ∈ {0,1}^{n×k}: U[i, c] = 1 when channel i belongs to cluster c."""
        u = torch.zeros(len(self.labels), self.k, dtype=dtype)
        u[torch.arange(len(self.labels)), self.labels] = 1
        return u


def register_clusterer(name: str):
    """Decorator: `fn(x, k, *, seed=0, **options) -> Clustering` becomes cluster(method=name).
    Options a clusterer has no use for are ignored, so callers pass one set to any method."""
    def wrap(fn):
        CLUSTERERS[name] = fn
        return fn
    return wrap


def cluster(x: torch.Tensor, k: int, method: str = "kmeans", *, blocks: int = 1,
            **options) -> Clustering:
    """Cluster the rows of x into exactly k groups with the named method. blocks > 1: the
    rows are that many consecutive equal blocks (the channels a grouped conv reads block by
    block), each clustered alone into k/blocks clusters; labels run block after block."""
    x = _check(x, k)
    n = x.shape[0]
    if blocks > 1:
        if n % blocks or k % blocks:
            raise TunelessError(f"{n} channels in {blocks} grouped-conv blocks cannot be "
                                f"clustered into {k} (a multiple of {blocks} is needed)")
        nb, kb = n // blocks, k // blocks
        if method != "greedy" and 1 < kb < nb <= BATCHED_MAX_N:
            xb = x.reshape(blocks, nb, -1)
            labels = (exact_partitions(xb, kb) if nb <= EXACT_MAX_N
                      else kmeans_blocks(xb, kb, seed=int(options.get("seed", 0))))
            labels = (labels + torch.arange(blocks).unsqueeze(1) * kb).reshape(-1)
            return _finish(x, labels)
        parts = [cluster(x[b * nb:(b + 1) * nb], kb, method, **options) for b in range(blocks)]
        return Clustering(torch.cat([c.labels + b * kb for b, c in enumerate(parts)]),
                          torch.cat([c.centroids for c in parts]),
                          sum(c.inertia for c in parts))
    if method not in CLUSTERERS:
        raise TunelessError(
            f"unknown clustering method {method!r}; choose one of {', '.join(CLUSTERERS)}")
    if k == n:
        return _finish(x, torch.arange(n))
    if k == 1:
        return _finish(x, torch.zeros(n, dtype=torch.long))
    return CLUSTERERS[method](x, k, **options)


EXACT_MAX_N = 8  # blocks of up to this many channels are partitioned exactly (≤ 1,701 ways)


def exact_partitions(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-means optimum of each of B small problems x (B, n, d), n ≤ EXACT_MAX_N: every
    partition of n points into k non-empty clusters is scored at once from the Gram matrix
    (within-cluster scatter = Σ‖xᵢ‖² − Σ_c ‖Σ_{i∈c} xᵢ‖² / |c|). Labels (B, n), numbered by
    first member. A grouped conv's blocks of 4–8 channels take this path: 30 k-means
    restarts per block cost ~7 ms each, and with 32 blocks per group most of a fold."""
    n = x.shape[1]
    U = _partitions(n, k)  # (P, n, k) one-hot
    xd = x.double()
    gram = xd @ xd.transpose(1, 2)  # (B, n, n)
    sums = torch.einsum("pic,bij,pjc->bpc", U, gram, U)  # ‖Σ_{i∈c} xᵢ‖² per partition
    score = (sums / U.sum(1)).sum(2)  # (B, P): the part of Σ‖xᵢ‖² the centroids explain
    return U.argmax(2)[score.argmax(1)]


BATCHED_MAX_N = 64  # wider blocks are clustered one by one (the batch holds n × n per restart)


def kmeans_blocks(x: torch.Tensor, k: int, restarts: int = 10, seed: int = 0,
                  max_iter: int = 100, max_moves: int = 10_000) -> torch.Tensor:
    """k-means of B small problems x (B, n, d) at once, labels (B, n): every block of a
    grouped conv is its own problem, and one k-means call per block (30 restarts each)
    cost most of a RegNet's fold. Everything runs on the blocks' Gram matrices, so the
    width d never enters the loops: k-means++ seeding, Lloyd, then Hartigan's single-point
    moves (the best one per problem and round, while one lowers the objective) — within
    0.07% of one k-means per block on RegNet and ResNeXt groups, 2–5× faster
    (benchmarks/block_kmeans.py)."""
    B, n, _ = x.shape
    gen = torch.Generator().manual_seed(int(seed))
    xd = x.detach().double()
    gram = (xd @ xd.transpose(1, 2)).repeat_interleave(restarts, 0)  # (P, n, n)
    sq = gram.diagonal(dim1=1, dim2=2)  # (P, n): ‖xᵢ‖²
    P, rows = B * restarts, torch.arange(B * restarts)

    def to_point(j):  # (P, n): squared distance of every point to point j of its problem
        return (sq - 2 * gram[rows, :, j] + sq[rows, j].unsqueeze(1)).clamp_min(0)

    seeds = [torch.randint(n, (P,), generator=gen)]
    nearest = to_point(seeds[0])
    for _ in range(1, k):  # k-means++: the next seed drawn ∝ squared distance
        seeds.append(torch.multinomial(nearest + 1e-300, 1, generator=gen).squeeze(1))
        nearest = torch.minimum(nearest, to_point(seeds[-1]))
    labels = torch.stack([to_point(j) for j in seeds], 2).argmin(2)
    ids = torch.arange(k)

    def to_centroids(labels):  # (P, n, k) squared distances, (P, k) sizes
        one = (labels.unsqueeze(2) == ids).double()
        size = one.sum(1)
        inner = gram @ one
        norm = (one * inner).sum(1) / size.clamp_min(1) ** 2
        dist = sq.unsqueeze(2) - 2 * inner / size.clamp_min(1).unsqueeze(1) + norm.unsqueeze(1)
        return dist, size

    for _ in range(max_iter):  # Lloyd
        dist, size = to_centroids(labels)
        new = dist.masked_fill((size == 0).unsqueeze(1), float("inf")).argmin(2)
        if torch.equal(new, labels):
            break
        labels = new
    tol = 1e-12 * (sq.sum(1) + 1)
    for _ in range(max_moves):  # Hartigan: moving i from a to b changes the objective by
        dist, size = to_centroids(labels)  # s_b/(s_b+1)·d(i,b) − s_a/(s_a−1)·d(i,a)
        own_size = torch.gather(size, 1, labels)
        own = torch.gather(dist, 2, labels.unsqueeze(2)).squeeze(2)
        leave = torch.where(own_size > 1, own_size / (own_size - 1).clamp_min(1) * own,
                            torch.full_like(own, -float("inf")))
        delta = size.unsqueeze(1) / (size.unsqueeze(1) + 1) * dist - leave.unsqueeze(2)
        delta.scatter_(2, labels.unsqueeze(2), float("inf"))
        best, where = delta.view(P, -1).min(1)
        move = best < -tol
        if not bool(move.any()):
            break
        labels = labels.clone()
        labels[rows[move], (where // k)[move]] = (where % k)[move]
    one = (labels.unsqueeze(2) == ids).double()
    size = one.sum(1)
    inertia = sq.sum(1) - ((one * (gram @ one)).sum(1) / size.clamp_min(1)).sum(1)
    pick = inertia.view(B, restarts).argmin(1)
    out = labels.view(B, restarts, n)[torch.arange(B), pick]
    return torch.stack([fill_empty(lab, k) for lab in out])


_PARTITIONS: dict[tuple[int, int], torch.Tensor] = {}


def _partitions(n: int, k: int) -> torch.Tensor:
    """Every partition of n items into k non-empty clusters as one-hot (P, n, k), cluster
    ids in order of first member (restricted growth strings)."""
    if (n, k) not in _PARTITIONS:
        out: list[list[int]] = []

        def grow(prefix: list[int], top: int) -> None:
            if len(prefix) == n:
                if top == k:
                    out.append(list(prefix))
                return
            if top + (n - len(prefix)) < k:
                return
            for c in range(min(top + 1, k)):
                grow([*prefix, c], max(top, c + 1))

        grow([], 0)
        _PARTITIONS[(n, k)] = torch.nn.functional.one_hot(
            torch.tensor(out), k).to(torch.float64)
    return _PARTITIONS[(n, k)]


def fill_empty(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Labels using all k clusters: while some are empty, move the last member of the largest
    cluster into one of them.

    Clusters only come out empty when points coincide (k exceeds the distinct points), and a
    point leaving a cluster for a cluster of its own never raises the objective, so exactly k
    clusters (the width the budget asked for) cost nothing.
    """
    labels = canonical_labels(labels).clone()
    used = int(labels.max()) + 1
    sizes = torch.bincount(labels, minlength=k)
    for new in range(used, k):
        big = int(torch.argmax(sizes))
        if int(sizes[big]) < 2:
            raise TunelessError(f"cannot form {k} clusters from {len(labels)} points")
        member = int(torch.nonzero(labels == big).max())
        labels[member] = new
        sizes[big] -= 1
        sizes[new] = 1
    return labels


def _check(x: torch.Tensor, k: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise TunelessError("features to cluster must be a 2-D tensor (channels × features)")
    if not 1 <= k <= x.shape[0]:
        raise TunelessError(f"cannot make {k} clusters from {x.shape[0]} channels")
    if not _all_finite(x):
        raise TunelessError("features to cluster contain NaN or infinite values")
    return x.detach()


def _all_finite(x: torch.Tensor) -> bool:
    """One reduction instead of an n×d boolean mask; exact check only if the sum overflows."""
    total = x.detach().float().sum() if x.is_floating_point() else None
    if total is not None and bool(torch.isfinite(total)):
        return True
    return bool(torch.isfinite(x).all())


def canonical_labels(labels: torch.Tensor) -> torch.Tensor:
    """Renumber clusters in order of their first member, so equal partitions get equal labels."""
    n = len(labels)
    first = torch.full((int(labels.max()) + 1,), n, dtype=torch.long)
    first.scatter_reduce_(0, labels, torch.arange(n), reduce="amin")
    used = first < n
    order = torch.argsort(first[used])
    remap = torch.full_like(first, -1)
    remap[torch.nonzero(used).squeeze(1)[order]] = torch.arange(int(used.sum()))
    return remap[labels]


def _finish(x: torch.Tensor, labels: torch.Tensor, z: torch.Tensor | None = None,
            k: int | None = None) -> Clustering:
    """Canonical labels (exactly k clusters when k is given), cluster means and the objective
    (accumulated in float64).

    z, an isometric embedding of x (see `embed`), gives the same objective in n
    dimensions instead of d, so the objective is computed there when available.
    """
    labels = canonical_labels(labels)
    if k is not None and int(labels.max()) + 1 < k:
        labels = canonical_labels(fill_empty(labels, k))
    k = int(labels.max()) + 1
    sizes = torch.bincount(labels, minlength=k).unsqueeze(1)
    if z is not None:
        cents = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, labels, x) / sizes
        return Clustering(labels, cents, _objective(z, labels, k))
    xf = x.double() if x.numel() <= 2**22 else x.float()
    sums = torch.zeros(k, x.shape[1], dtype=xf.dtype).index_add_(0, labels, xf)
    cents = sums / sizes.to(xf.dtype)
    inertia = float(((xf - cents[labels]) ** 2).sum(1, dtype=torch.float64).sum())
    return Clustering(labels, cents.to(x.dtype), inertia)


def inertia_of(x: torch.Tensor, labels: torch.Tensor) -> float:
    """The k-means objective Σ ||x_i − mean of i's cluster||² (float64)."""
    return _finish(x, labels).inertia


# --------------------------------------------------------------------------- k-means


@register_clusterer("kmeans")
def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    n_init: int | str = "auto",
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    refine: bool = True,
    dtype: torch.dtype | None = None,
) -> Clustering:
    """k-means with greedy k-means++ seeding, n_init batched restarts and Hartigan refinement.

    n_init="auto" runs 10 restarts at 128 channels, up to 30 for small groups (cheap,
    batched), and 10 up to 512 channels (a floor: on the VGG's 256-wide groups one
    restart cost Fold-AR 1–4 points, docs/folding.md); wider groups get fewer (two at
    1,024, one from 1,620):
    with k near n, Hartigan-refined restarts of a large group land within a fraction of
    a percent of each other, and a restart there costs as much as a small group's ten.

    tol is relative to the mean per-feature variance (as in scikit-learn). The
    result depends only on (x, k, options, seed), so it is bit-for-bit repeatable
    on the same machine and thread count.
    """
    x = _check(x, k)
    n, d = x.shape
    if n_init == "auto":
        n_init = auto_restarts(n)
    if not isinstance(n_init, int) or n_init < 1 or max_iter < 1 or tol < 0:
        raise TunelessError("k-means needs n_init ≥ 1 (or 'auto'), max_iter ≥ 1 and tol ≥ 0")
    if k == n or k == 1:
        return cluster(x, k)
    z = embed(x)  # same pairwise distances, in ≤ n dimensions when x is much wider
    work = n * k * z.shape[1]
    if dtype is None:
        dtype = torch.float64 if work <= 2e6 else torch.float32
    g = torch.Generator().manual_seed(int(seed))
    zz = _gram(z, dtype) if n <= max(_PAIRWISE_MAX_N, _GRAM_MAX_N) else None  # one for both
    z = z.to(dtype)
    tol_abs = float(tol * z.double().pow(2).sum() / (n * d))  # tol × mean feature variance
    pairwise = _pairwise_sq(z, zz) if n <= _PAIRWISE_MAX_N else None
    gram = zz if n <= _GRAM_MAX_N else None

    best_labels, best_inertia = None, math.inf
    per_batch = max(1, _BATCH_ELEMENTS // (n * k)) if work <= 5e7 else 1
    all_seeds = _kmeanspp(z, k, n_init, g, pairwise) if pairwise is not None else None
    done = 0
    while done < n_init:
        b = min(per_batch, n_init - done)
        seeds = (all_seeds[done:done + b] if all_seeds is not None
                 else _kmeanspp(z, k, b, g, pairwise))
        if b == 1:
            labels, inertias = _lloyd_incremental(z, z[seeds[0]], max_iter, tol_abs)
        else:
            labels, inertias = _lloyd(z, z[seeds], max_iter, tol_abs)
        if refine and b > 1:  # small problems: refine every restart, Lloyd optima differ
            labels = (hartigan_batched(z, labels, k) if b * n * k * z.shape[1] <= _BATCHED_HARTIGAN
                      else torch.stack([hartigan(z, lab, k, gram=gram) for lab in labels]))
            inertias = torch.tensor([_objective(z, lab, k) for lab in labels])
        i = int(torch.argmin(inertias))
        if float(inertias[i]) < best_inertia:
            best_inertia, best_labels = float(inertias[i]), labels[i].clone()
        done += b
    if refine and per_batch == 1:
        best_labels = hartigan(z, best_labels, k, gram=gram)
    return _finish(x, best_labels, z, k)


def auto_restarts(n: int) -> int:
    """Restarts for n_init='auto': 10·(128/n)², at most 30 (n ≤ 73); at least 10 up to 512
    channels, then 10·(512/n)² (at least 1: one restart from 1,623 channels)."""
    if n <= 512:
        return max(10, min(30, int(10 * (128 / n) ** 2)))
    return max(1, int(10 * (512 / n) ** 2))


def _objective(z: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    z = z.double()
    sums = torch.zeros(k, z.shape[1], dtype=torch.float64).index_add_(0, labels, z)
    cents = sums / torch.bincount(labels, minlength=k).clamp(min=1).unsqueeze(1)
    return float(((z - cents[labels]) ** 2).sum())


EMBED_CACHE_BYTES = 512 * 2**20  # embeddings kept by reuse_embeddings, at most
_embeddings: dict | None = None  # while reuse_embeddings is active: key -> (x, version, z)
_embeddings_lock = threading.Lock()


@contextmanager
def reuse_embeddings(max_bytes: int = EMBED_CACHE_BYTES) -> Iterator[None]:
    """Within it `embed` computes each feature matrix's embedding once: a sensitivity
    allocation clusters the same group at several depths, then once more at its width
    (resnet18 at 30%: 20 embeddings of 12 groups). A matrix is recognised by its storage,
    shape and strides while its version is unchanged (an in-place change recomputes it);
    the entry holds the matrix, so its memory cannot be reused by another. Up to max_bytes
    of embeddings are kept; later ones are computed each time. Nested uses share the outer
    one's."""
    global _embeddings
    if _embeddings is not None:
        yield
        return
    _embeddings = {"bytes": 0, "max": max_bytes}
    try:
        yield
    finally:
        _embeddings = None


def embed(x: torch.Tensor) -> torch.Tensor:
    """`_embed(x)`, computed once per matrix inside `reuse_embeddings` (the embedding is
    shared: callers must not change it in place)."""
    return _kept("embed", x, _embed)


def _gram(z: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """z zᵀ (in `dtype`), kept with z's embedding inside `reuse_embeddings` (O(n³) for a
    square embedding: Ward + Hartigan of a 1,152-wide group redid it at every depth)."""
    dtype = z.dtype if dtype is None else dtype
    return _kept(f"gram-{dtype}", z, lambda t: t.to(dtype) @ t.to(dtype).T)


def _kept(tag: str, x: torch.Tensor, compute) -> torch.Tensor:
    """compute(x), computed once per (tag, matrix) while reuse_embeddings is active. A matrix
    is its storage, offset, shape, strides, dtype and device at an unchanged version."""
    cache = _embeddings
    if cache is None:
        return compute(x)
    key = (tag, x.data_ptr(), x.storage_offset(), tuple(x.shape), tuple(x.stride()), x.dtype,
           x.device)
    with _embeddings_lock:
        hit = cache.get(key)
    if hit is not None and hit[1] == x._version:
        return hit[2]
    value = compute(x)
    size = value.numel() * value.element_size()
    with _embeddings_lock:
        if hit is not None:  # changed in place since: the old entry goes
            cache["bytes"] -= hit[2].numel() * hit[2].element_size()
            del cache[key]
        if cache["bytes"] + size <= cache["max"]:
            cache[key] = (x, x._version, value)
            cache["bytes"] += size
    return value


def _embed(x: torch.Tensor) -> torch.Tensor:
    """Centred rows mapped isometrically into min(n, d) dimensions (via the Gram matrix).

    k-means depends only on pairwise distances, and n points span at most n − 1
    directions, so a wide feature matrix (a conv's rows and its consumers' columns,
    thousands of values per channel) clusters exactly as well in n dimensions. Large
    problems use a float32 Gram matrix (one n×n×d product, the dominant cost of a fold).
    From _CHOLESKY_MIN_N channels the factor is a Cholesky one of the Gram matrix plus εI
    (5× faster than the eigendecomposition at 4,096): that adds the same ε·(n − k) to the
    objective of every partition and leaves every Hartigan move's gain unchanged (it is
    one extra orthogonal direction per point), so the clustering is the same.
    """
    small = x.shape[0] * x.shape[0] * x.shape[1] <= 2e7
    xc = x.double() if small else x.float()
    xc = xc - xc.mean(0)
    n, d = xc.shape
    if d <= 2 * n:  # no real reduction: the eigendecomposition would cost more than it saves
        return xc
    gram = xc @ xc.T
    if n >= _CHOLESKY_MIN_N:
        g64 = (gram.double() + gram.T.double()) / 2
        eps = float(g64.diagonal().mean().clamp(min=1e-30)) * 1e-9
        eye = torch.eye(n, dtype=torch.float64)
        for _ in range(6):
            factor, info = torch.linalg.cholesky_ex(g64 + eps * eye)
            if int(info) == 0:
                return factor.to(xc.dtype)
            eps *= 100
    vals, vecs = torch.linalg.eigh((gram + gram.T) / 2)
    keep = vals > vals.max().clamp(min=0) * (1e-12 if small else 1e-7)
    return vecs[:, keep] * vals[keep].sqrt()


def _pairwise_sq(x: torch.Tensor, gram: torch.Tensor | None = None) -> torch.Tensor:
    sq = (x * x).sum(1)
    p = sq[:, None] + sq[None, :] - 2 * (x @ x.T if gram is None else gram)
    return p.clamp_(min=0)


def _sq_dist(x: torch.Tensor, sq_x: torch.Tensor, cents: torch.Tensor) -> torch.Tensor:
    """(b, n, k) squared distances from every row of x to each restart's centroids."""
    b, k, d = cents.shape
    sq_c = (cents * cents).sum(-1)  # (b, k)
    prod = (x @ cents.reshape(b * k, d).T).view(x.shape[0], b, k).transpose(0, 1)  # (b, n, k)
    return (sq_x[None, :, None] + sq_c[:, None, :] - 2 * prod).clamp_(min=0)


def _kmeanspp(x: torch.Tensor, k: int, b: int, g: torch.Generator,
              pairwise: torch.Tensor | None) -> torch.Tensor:
    """Greedy k-means++ (2 + log k candidates per step) for b restarts at once → (b, k) indices."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))

    def dist_to(idx: torch.Tensor) -> torch.Tensor:  # idx (b, t) → (b, t, n)
        if pairwise is not None:
            return pairwise[idx]
        rows = x[idx]  # (b, t, d)
        sq = (x * x).sum(1)
        return (sq[None, None, :] + (rows * rows).sum(-1, keepdim=True)
                - 2 * rows @ x.T).clamp_(min=0)

    first = torch.randint(0, n, (b, 1), generator=g)
    chosen = [first]
    closest = dist_to(first)[:, 0]  # (b, n)
    rows = torch.arange(b)
    tiny = torch.finfo(torch.float64).tiny  # all points already centres: sample uniformly
    for _ in range(1, k):
        weights = closest.double() + tiny
        cand = torch.multinomial(weights, trials, replacement=True, generator=g)  # (b, t)
        new = torch.minimum(closest[:, None, :], dist_to(cand))  # (b, t, n)
        best = torch.argmin(new.sum(-1), dim=1)  # (b,)
        chosen.append(cand[rows, best].unsqueeze(1))
        closest = new[rows, best]
    return torch.cat(chosen, 1)


def _lloyd(x: torch.Tensor, cents: torch.Tensor, max_iter: int,
           tol_abs: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd iterations for b restarts at once; returns labels (b, n) and inertia (b,)."""
    b, k, d = cents.shape
    n = x.shape[0]
    sq_x = (x * x).sum(1)
    offsets = (torch.arange(b) * k).unsqueeze(1)
    ones = torch.ones(b * n, dtype=x.dtype)
    labels = None
    for _ in range(max_iter):
        dist = _sq_dist(x, sq_x, cents)
        min_d, new_labels = dist.min(2)
        flat = (new_labels + offsets).reshape(-1)
        sums = torch.zeros(b * k, d, dtype=x.dtype)
        for r in range(b):
            sums[r * k:(r + 1) * k].index_add_(0, new_labels[r], x)
        counts = torch.zeros(b * k, dtype=x.dtype).index_add_(0, flat, ones)
        new_cents = (sums / counts.clamp(min=1).unsqueeze(1)).view(b, k, d)
        empty = (counts == 0).view(b, k)
        if empty.any():
            new_cents = _relocate_empty(x, new_cents, empty, min_d)
        shift = ((new_cents - cents) ** 2).sum((1, 2))
        same = labels is not None and torch.equal(new_labels, labels)
        cents, labels = new_cents, new_labels
        if same or bool((shift <= tol_abs).all()):
            break
    dist = _sq_dist(x, sq_x, cents)
    min_d, labels = dist.min(2)
    return labels, min_d.double().sum(1)


def _lloyd_incremental(x: torch.Tensor, cents: torch.Tensor, max_iter: int,
                       tol_abs: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Lloyd for one restart that recomputes distances only to centroids that moved.

    With many clusters (k ≈ n/2) most centroids stop moving after a few iterations, so
    later iterations cost O(n·d·moved) instead of O(n·d·k).
    """
    n, d = x.shape
    k = cents.shape[0]
    sq_x = (x * x).sum(1)
    dist = _sq_dist(x, sq_x, cents.unsqueeze(0))[0]
    labels = None
    ones = torch.ones(n, dtype=x.dtype)
    for _ in range(max_iter):
        min_d, new_labels = dist.min(1)
        sums = torch.zeros(k, d, dtype=x.dtype).index_add_(0, new_labels, x)
        counts = torch.zeros(k, dtype=x.dtype).index_add_(0, new_labels, ones)
        new_cents = sums / counts.clamp(min=1).unsqueeze(1)
        empty = counts == 0
        if empty.any():
            new_cents = _relocate_empty(x, new_cents.unsqueeze(0), empty.unsqueeze(0),
                                        min_d.unsqueeze(0))[0]
        moved_by = ((new_cents - cents) ** 2).sum(1)
        moved = torch.nonzero(moved_by > 0).squeeze(1)
        same = labels is not None and torch.equal(new_labels, labels)
        cents, labels = new_cents, new_labels
        if len(moved):
            c = cents[moved]
            dist[:, moved] = (sq_x[:, None] + (c * c).sum(1)[None, :]
                              - 2 * x @ c.T).clamp_(min=0)
        if same or float(moved_by.sum()) <= tol_abs:
            break
    min_d, labels = dist.min(1)
    return labels.unsqueeze(0), min_d.double().sum().unsqueeze(0)


def _relocate_empty(x: torch.Tensor, cents: torch.Tensor, empty: torch.Tensor,
                    min_d: torch.Tensor) -> torch.Tensor:
    """Move each empty centroid onto a point far from its centre (as scikit-learn does)."""
    cents = cents.clone()
    for r in torch.nonzero(empty.any(1)).squeeze(1).tolist():
        idx = torch.nonzero(empty[r]).squeeze(1)
        far = torch.argsort(min_d[r], descending=True, stable=True)[: len(idx)]
        cents[r, idx] = x[far]
    return cents


def hartigan(x: torch.Tensor, labels: torch.Tensor, k: int, max_rounds: int = 1000,
             gram: torch.Tensor | None = None) -> torch.Tensor:
    """Hartigan single-point moves: move i from a to b when it lowers the k-means objective.

    Moving i changes the objective by |b|/(|b|+1)·d(i,b)² − |a|/(|a|−1)·d(i,a)². Each round
    applies the best improving moves whose clusters are pairwise disjoint (so their
    gains are exact), which never raises the objective and stops at a Hartigan optimum.
    Everything is updated incrementally: a move changes two centroids by a rank-one
    step, so their inner products with all points follow from one Gram-matrix column
    (O(n) instead of O(n·d)), and only points whose best target was touched are
    rescanned. Exact values are recomputed every `_REFRESH` rounds and before stopping.
    gram: x xᵀ when the caller has it already.
    """
    n, d = x.shape
    labels = labels.clone()
    sizes = torch.bincount(labels, minlength=k).to(x.dtype)
    sums = torch.zeros(k, d, dtype=x.dtype).index_add_(0, labels, x)
    if gram is None and n <= _GRAM_MAX_N:
        gram = x @ x.T
    sq_x = (x * x).sum(1)
    ar = torch.arange(n)
    scale = torch.finfo(x.dtype).eps * 64
    slot = torch.full((k,), -1, dtype=torch.long)

    def exact():
        """inner[i, c] = x_i · centroid_c, |centroid|², distances and best targets, recomputed.
        Wide groups read them off the Gram matrix (n² work instead of n·k·d)."""
        if gram is not None and n >= _CHOLESKY_MIN_N:
            per = sizes.clamp(min=1)
            inner = torch.zeros(n, k, dtype=x.dtype).index_add_(1, labels, gram) / per
            cnorm = torch.zeros(k, dtype=x.dtype).index_add_(0, labels, inner[ar, labels]) / per
        else:
            cents = sums / sizes.clamp(min=1)[:, None]
            inner, cnorm = x @ cents.T, (cents * cents).sum(1)
        dist = (sq_x[:, None] + cnorm[None, :] - 2 * inner).clamp_(min=0)
        return (inner, cnorm, dist, *_best_targets(dist, sizes, labels, ar))

    inner, cnorm, dist, best_add, target = exact()
    since = 0
    for _ in range(max_rounds):
        s_own = sizes[labels]
        remove = torch.where(s_own > 1, s_own / (s_own - 1).clamp(min=1) * dist[ar, labels],
                             torch.full_like(s_own, -math.inf))
        delta = best_add - remove
        movers = torch.nonzero(delta < -scale * (1 + remove.abs())).squeeze(1)
        if len(movers) == 0:
            if since == 0:
                break
            inner, cnorm, dist, best_add, target = exact()  # confirm the optimum exactly
            since = 0
            continue
        movers = movers[torch.argsort(delta[movers], stable=True)]
        used: set[int] = set()
        picked = []
        for i, a, t in zip(movers.tolist(), labels[movers].tolist(), target[movers].tolist()):
            if a in used or t in used:
                continue
            used.update((a, t))
            picked.append((i, a, t))
        touched = torch.tensor(sorted(used))
        idx, src, dst = (torch.tensor(v) for v in zip(*picked))
        m_src, m_dst = sizes[src], sizes[dst]
        labels[idx] = dst
        moved = x[idx]
        sizes.index_add_(0, src, torch.full((len(idx),), -1.0, dtype=x.dtype))
        sizes.index_add_(0, dst, torch.ones(len(idx), dtype=x.dtype))
        sums.index_add_(0, src, -moved).index_add_(0, dst, moved)
        since += 1
        if gram is None or since >= _REFRESH:
            inner, cnorm, dist, best_add, target = exact()
            since = 0
            continue
        g_i, g_ii = gram[:, idx], sq_x[idx]  # rank-one centroid steps: c' = (m·c ∓ x_i)/(m ∓ 1)
        for cols, m, sign in ((src, m_src, -1.0), (dst, m_dst, 1.0)):
            p_i = inner[idx, cols]
            cnorm[cols] = (m * m * cnorm[cols] + sign * 2 * m * p_i + g_ii) / (m + sign) ** 2
            inner[:, cols] = (m * inner[:, cols] + sign * g_i) / (m + sign)
        dist[:, touched] = (sq_x[:, None] + cnorm[touched][None, :]
                            - 2 * inner[:, touched]).clamp_(min=0)
        # Best targets: untouched columns are unchanged, so a point whose best target was
        # not touched only compares its old best with the touched columns.
        slot[touched] = torch.arange(len(touched))
        add_t = dist[:, touched] * (sizes[touched] / (sizes[touched] + 1))[None, :]
        own_slot = slot[labels]
        inside = torch.nonzero(own_slot >= 0).squeeze(1)
        add_t[inside, own_slot[inside]] = math.inf
        t_min, t_pos = add_t.min(1)
        better = t_min < best_add
        best_add = torch.where(better, t_min, best_add)
        target = torch.where(better, touched[t_pos], target)
        stale = torch.nonzero((slot[target] >= 0) & ~better).squeeze(1)  # old best touched
        if len(stale):
            best_add[stale], target[stale] = _best_targets(dist[stale], sizes, labels[stale],
                                                           torch.arange(len(stale)))
        slot[touched] = -1
    return labels


def _best_targets(dist: torch.Tensor, sizes: torch.Tensor, labels: torch.Tensor,
                  rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point: the cheapest cluster to join, |b|/(|b|+1)·d(i,b)², over b ≠ its own."""
    add = dist * (sizes / (sizes + 1))[None, :]
    add[rows, labels] = math.inf
    return add.min(1)


def hartigan_batched(x: torch.Tensor, labels: torch.Tensor, k: int,
                     max_rounds: int = 1000) -> torch.Tensor:
    """Hartigan single-point moves for b restarts at once (labels (b, n)), without Python loops.

    Same moves and guarantees as `hartigan`, with the disjoint set chosen in tensors: a
    move is taken when it is the best (then lowest-index) improving move among all moves
    that touch its source or its target cluster, so no two taken moves share a cluster
    and each one's gain is exact. The globally best move is always taken, so every round
    lowers the objective until none improves it.
    """
    b, n = labels.shape
    d = x.shape[1]
    labels = labels.clone()
    rows = torch.arange(b).unsqueeze(1)
    sq_x = (x * x).sum(1)
    scale = torch.finfo(x.dtype).eps * 64
    idx = torch.arange(n).expand(b, n)
    for _ in range(max_rounds):
        flat = (labels + rows * k).reshape(-1)
        sizes = torch.zeros(b * k, dtype=x.dtype).index_add_(
            0, flat, torch.ones(b * n, dtype=x.dtype)).view(b, k)
        sums = torch.zeros(b * k, d, dtype=x.dtype).index_add_(0, flat, x.repeat(b, 1))
        cents = (sums / sizes.reshape(-1, 1).clamp(min=1)).view(b, k, d)
        dist = (sq_x[None, :, None] + (cents * cents).sum(-1)[:, None, :]
                - 2 * torch.matmul(x, cents.transpose(1, 2))).clamp_(min=0)  # (b, n, k)
        s_own = sizes.gather(1, labels)
        d_own = dist.gather(2, labels.unsqueeze(2)).squeeze(2)
        remove = torch.where(s_own > 1, s_own / (s_own - 1).clamp(min=1) * d_own,
                             torch.full_like(s_own, -math.inf))
        add = dist * (sizes / (sizes + 1)).unsqueeze(1)
        add.scatter_(2, labels.unsqueeze(2), math.inf)
        best_add, target = add.min(2)
        delta = best_add - remove
        move = delta < -scale * (1 + remove.abs())
        if not bool(move.any()):
            break
        key = torch.where(move, delta, torch.full_like(delta, math.inf))
        low = torch.full((b, k), math.inf, dtype=x.dtype)
        low.scatter_reduce_(1, labels, key, reduce="amin").scatter_reduce_(1, target, key,
                                                                           reduce="amin")
        best = move & (key == low.gather(1, labels)) & (key == low.gather(1, target))
        first = torch.full((b, k), n, dtype=torch.long)
        cand = torch.where(best, idx, torch.full_like(idx, n))
        first.scatter_reduce_(1, labels, cand, reduce="amin").scatter_reduce_(1, target, cand,
                                                                              reduce="amin")
        take = best & (idx == first.gather(1, labels)) & (idx == first.gather(1, target))
        labels = torch.where(take, target, labels)
    return labels


# --------------------------------------------------------------------------- others


@register_clusterer("ward")
def ward(x: torch.Tensor, k: int, *, seed: int = 0, **_ignored) -> Clustering:
    """Ward agglomerative clustering cut at exactly k clusters (deterministic: `seed` is
    ignored). Torch only: the nearest-neighbour chain on a dense matrix of merge costs."""
    x = _check(x, k)
    n = x.shape[0]
    if k == n:
        return _finish(x, torch.arange(n))
    return _finish(x, ward_labels(embed(x), k))


@register_clusterer("ward-hartigan")
def ward_hartigan(x: torch.Tensor, k: int, *, seed: int = 0, **_ignored) -> Clustering:
    """Ward's partition refined by Hartigan single-point moves (a local k-means optimum
    started from Ward; deterministic)."""
    x = _check(x, k)
    n = x.shape[0]
    if k == n:
        return _finish(x, torch.arange(n))
    z = embed(x)  # one embedding and one Gram matrix serve Ward and the Hartigan moves
    gram = _gram(z, torch.float64) if n <= _GRAM_MAX_N else None
    labels = canonical_labels(ward_labels(z, k, gram=gram))
    return _finish(x, hartigan(z, labels, k, gram=None if gram is None else gram.to(z.dtype)),
                   z, k)


@register_clusterer("kmeans+ward")
def kmeans_or_ward(x: torch.Tensor, k: int, **options) -> Clustering:
    """The lower-objective partition of k-means (its restarts, seeded) and Ward + Hartigan
    (one more, deterministic start)."""
    a = kmeans(x, k, **options)
    b = ward_hartigan(x, k)
    return b if b.inertia < a.inertia else a


# "auto": groups of at least WARD_MIN_WIDTH channels that keep at least SHALLOW_CUT of them
# use Ward + Hartigan (docs/folding.md "Shallow cuts of wide groups"). 0.6 since it was
# measured against 0.7 and 0.5 on the VGG11-BN, the MLP and EfficientNet-Lite0 (the only
# benchmark networks with such groups): level or ahead in every cell (benchmarks/fold_cut.sh)
SHALLOW_CUT = 0.6
WARD_MIN_WIDTH = 256


@register_clusterer("auto")
def shallow_ward(x: torch.Tensor, k: int, *, shallow_cut: float = SHALLOW_CUT,
                 min_width: int = WARD_MIN_WIDTH, **options) -> Clustering:
    """Ward + Hartigan for a shallow cut of a wide group (n ≥ min_width, k ≥ shallow_cut·n),
    k-means elsewhere.

    A shallow cut only has to find the n − k cheapest merges, which Ward does in a few
    vectorised rounds, where k-means++ seeding takes k sequential steps and every restart
    a Hartigan pass: on ImageNet-sized networks those groups are most of a fold's time.
    Narrow groups keep k-means: cheap there, and Ward was better on some residual
    networks and worse on others (docs/folding.md).
    """
    x = _check(x, k)
    n = x.shape[0]
    if n >= min_width and k >= shallow_cut * n:
        return ward_hartigan(x, k)
    return kmeans(x, k, **options)


def ward_labels(z: torch.Tensor, k: int, gram: torch.Tensor | None = None) -> torch.Tensor:
    """Labels of Ward's agglomeration of the rows of z cut at k clusters (scipy's partition).

    A merge raises the within-cluster sum of squares by n_a n_b/(n_a + n_b)·‖c_a − c_b‖²,
    kept for all pairs and updated by the Lance–Williams formula. Ward's costs are
    reducible, so every pair of reciprocal nearest neighbours is a merge of the dendrogram
    and all of them can be merged at once: each round is a few matrix operations. Rounds
    stop once no later merge can be among the n − k cheapest, which are then applied
    (cheapest first; a merge never costs less than the merges it builds on).
    gram: z zᵀ when the caller has it already.
    """
    n = z.shape[0]
    if k >= n:
        return torch.arange(n)
    z = z.to(torch.float64 if n <= 8192 else torch.float32)
    if gram is not None:
        gram = gram.to(z.dtype)
    cost = _pairwise_sq(z, gram) * 0.5  # two singletons: ½‖x_a − x_b‖²
    cost.fill_diagonal_(math.inf)
    size = torch.ones(n, dtype=z.dtype)
    idx = torch.arange(n)
    merges = torch.empty(0, 3, dtype=z.dtype)  # rows: slot a (kept), slot b, cost
    left = n
    while left > 1:
        near, near_idx = cost.min(1)
        if len(merges) >= n - k and merges[:, 2].kthvalue(n - k).values <= near.min():
            break  # every later merge costs at least near.min()
        pair = (near_idx[near_idx] == idx) & (idx < near_idx) & torch.isfinite(near)
        a, b, h = idx[pair], near_idx[pair], near[pair]
        na, nb, rest = size[a, None], size[b, None], size[None, :]
        rows = ((na + rest) * cost[a] + (nb + rest) * cost[b] - rest * h[:, None]) \
            / (na + nb + rest)  # merged cluster → every old cluster
        merged = na + nb  # (pairs, 1)
        nat, nbt = na.T, nb.T
        between = ((nat + merged) * rows[:, a] + (nbt + merged) * rows[:, b]
                   - merged * h[None, :]) / (nat + nbt + merged)  # merged → merged
        between.fill_diagonal_(math.inf)
        rows[:, b] = math.inf
        rows[:, a] = between
        cost[a] = rows
        cost[:, a] = rows.T
        cost[b] = math.inf
        cost[:, b] = math.inf
        size[a] = merged.squeeze(1)
        merges = torch.cat([merges, torch.stack([a.to(z.dtype), b.to(z.dtype), h], 1)])
        left -= len(a)
    cheapest = torch.sort(merges[:, 2], stable=True).indices[: n - k]  # ties: earlier first
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in merges[cheapest, :2].long().tolist():
        parent[find(b)] = find(a)
    return torch.tensor([find(i) for i in range(n)])


@register_clusterer("greedy")
def greedy_pairs(x: torch.Tensor, k: int, *, weighted: bool = True,
                 summed: torch.Tensor | None = None, seed: int = 0, **_ignored) -> Clustering:
    """IFM's greedy pairing: repeatedly merge the two closest (merged) channels until k remain.

    A merged channel's feature is the size-weighted average of its parts; feature
    columns flagged in `summed` (consumer columns, which folding adds up) are summed
    instead, exactly as the merged weights would be. Ties break to the lowest indices.
    """
    x = _check(x, k)
    n, d = x.shape
    feats = x.double().clone()
    size = torch.ones(n, dtype=torch.float64)
    alive = torch.ones(n, dtype=torch.bool)
    labels = torch.arange(n)
    mask = torch.zeros(d, dtype=torch.bool) if summed is None else summed.bool()
    dist = _pairwise_sq(feats)
    dist.fill_diagonal_(math.inf)
    for _ in range(n - k):
        flat = int(torch.argmin(dist))
        i, j = divmod(flat, n)
        i, j = min(i, j), max(i, j)
        wi, wj = (size[i], size[j]) if weighted else (1.0, 1.0)
        merged = (wi * feats[i] + wj * feats[j]) / (wi + wj)
        merged[mask] = feats[i, mask] + feats[j, mask]
        feats[i] = merged
        size[i] += size[j]
        alive[j] = False
        labels[labels == j] = i
        dist[j, :] = math.inf
        dist[:, j] = math.inf
        row = ((feats - feats[i]) ** 2).sum(1)
        row[~alive] = math.inf
        row[i] = math.inf
        dist[i, :] = row
        dist[:, i] = row
    return _finish(x, labels)
