"""k-means quality against scikit-learn, determinism, exact-k and the other clusterers."""

import pytest
import torch

from tuneless.cluster import canonical_labels, cluster, greedy_pairs, inertia_of, kmeans, ward
from tuneless.errors import TunelessError

sklearn_cluster = pytest.importorskip("sklearn.cluster")


def _data(kind: str) -> tuple[torch.Tensor, int]:
    g = torch.Generator().manual_seed(7)
    if kind == "random":
        return torch.randn(64, 288, generator=g), 32
    if kind == "blobs":
        centres = torch.randn(12, 30, generator=g) * 3
        return centres.repeat_interleave(10, 0) + torch.randn(120, 30, generator=g), 12
    if kind == "anisotropic":  # conv-like: few strong directions, many weak ones
        return torch.randn(96, 64, generator=g) * torch.logspace(0, -2, 64), 40
    if kind == "weights":  # scale of real conv rows (O(0.01))
        return torch.randn(128, 576, generator=g) * 0.02, 90
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["random", "blobs", "anisotropic", "weights"])
def test_objective_not_worse_than_sklearn(kind):
    x, k = _data(kind)
    ours = kmeans(x, k, seed=0)
    ref = sklearn_cluster.KMeans(k, n_init=10, random_state=0).fit(x.double().numpy())
    assert ours.inertia <= ref.inertia_ * (1 + 1e-9)
    assert ours.inertia == pytest.approx(inertia_of(x, ours.labels), rel=1e-9)


def test_recovers_separated_blobs_exactly():
    x, k = _data("blobs")
    r = kmeans(x, k, seed=1)
    assert torch.equal(r.labels, torch.arange(12).repeat_interleave(10))


def test_seed_makes_results_bit_for_bit_repeatable():
    x, k = _data("random")
    a, b = kmeans(x, k, seed=5), kmeans(x, k, seed=5)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia


@pytest.mark.parametrize("method", ["kmeans", "ward", "greedy"])
def test_every_method_returns_exactly_k_clusters(method):
    x, _ = _data("anisotropic")
    for k in (1, 5, 47, 95, 96):
        r = cluster(x, k, method=method)
        assert r.k == k and torch.equal(torch.unique(r.labels), torch.arange(k))
        assert r.labels[0] == 0  # canonical numbering


def test_k_equal_n_is_identity_with_zero_inertia():
    x, _ = _data("random")
    r = cluster(x, 64)
    assert torch.equal(r.labels, torch.arange(64)) and r.inertia == 0.0
    assert torch.equal(r.centroids, x)


def test_duplicates_are_paired_by_every_method():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(10, 8, generator=g)
    x = torch.cat([base, base])[torch.randperm(20, generator=g)]
    for method in ("kmeans", "ward", "greedy"):
        r = cluster(x, 10, method=method)
        assert r.inertia < 1e-20
        assert torch.allclose(x, r.centroids[r.labels])


def test_greedy_sums_flagged_columns_and_weights_by_size():
    x = torch.tensor([[0.0, 1.0], [0.1, 2.0], [5.0, 0.0]])
    summed = torch.tensor([False, True])
    r = greedy_pairs(x, 2, summed=summed)
    assert r.labels.tolist() == [0, 0, 1]


def test_ward_matches_objective_of_its_labels():
    x, k = _data("blobs")
    r = ward(x, k)
    assert r.inertia == pytest.approx(inertia_of(x, r.labels))


@pytest.mark.parametrize("n, d, k", [(40, 5, 7), (300, 20, 240), (200, 400, 3), (1100, 8, 900)])
def test_ward_is_scipys_ward(n, d, k):
    """The torch nearest-neighbour chain cuts the same partition as scipy's Ward linkage
    (the 1,100-channel case goes through the Cholesky embedding)."""
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n)) * torch.logspace(0, -1, d)
    ours = ward(x, k).labels
    ref = hierarchy.cut_tree(hierarchy.linkage(x.double().numpy(), method="ward"),
                             n_clusters=k).reshape(-1)
    assert torch.equal(ours, canonical_labels(torch.from_numpy(ref.astype("int64"))))


def test_ward_of_duplicates_merges_the_duplicates_first():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.0], [9.0, 0.0]])
    assert ward(x, 3).labels.tolist() == [0, 0, 1, 1, 2]


def test_canonical_labels():
    assert canonical_labels(torch.tensor([3, 3, 1, 0, 1])).tolist() == [0, 0, 1, 2, 1]


def test_bad_arguments():
    x, _ = _data("random")
    with pytest.raises(TunelessError, match="clusters"):
        cluster(x, 0)
    with pytest.raises(TunelessError, match="clusters"):
        cluster(x, 65)
    with pytest.raises(TunelessError, match="unknown clustering"):
        cluster(x, 3, method="spectral")
    with pytest.raises(TunelessError, match="NaN"):
        cluster(torch.full((4, 2), float("nan")), 2)
    with pytest.raises(TunelessError, match="2-D"):
        cluster(torch.zeros(4), 2)


def test_auto_restarts_shrink_with_group_size():
    from tuneless.cluster import auto_restarts

    assert auto_restarts(16) == 30 and auto_restarts(128) == 10 and auto_restarts(512) == 10
    assert auto_restarts(256) == 10 and auto_restarts(1024) == 2 and auto_restarts(4096) == 1
    sizes = [auto_restarts(n) for n in (16, 64, 100, 128, 256, 400, 512, 1024, 4096)]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("bad", [0, "many", 2.5])
def test_bad_restart_count_is_named(bad):
    x, k = _data("random")
    with pytest.raises(TunelessError, match="n_init"):
        kmeans(x, k, n_init=bad)


def test_wide_features_use_float32_gram_with_same_objective():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 3000, generator=g)
    r = kmeans(x, 120, seed=0)  # n·n·d > 2e7: float32 Gram embedding
    assert r.inertia == pytest.approx(inertia_of(x, r.labels), rel=1e-5)


def test_batched_hartigan_reaches_a_hartigan_optimum_never_worse_than_lloyd():
    from tuneless.cluster import _objective, hartigan, hartigan_batched

    g = torch.Generator().manual_seed(4)
    x = torch.randn(60, 8, generator=g, dtype=torch.float64)
    starts = torch.stack([torch.randint(0, 12, (60,), generator=g) for _ in range(5)])
    starts[:, :12] = torch.arange(12)  # every cluster non-empty
    out = hartigan_batched(x, starts, 12)
    for s, o in zip(starts, out):
        assert _objective(x, o, 12) <= _objective(x, s, 12) + 1e-12
        assert torch.equal(hartigan(x, o, 12), o)  # no single move improves it further


def test_hartigan_stops_where_no_single_move_improves():
    from tuneless.cluster import _objective, hartigan

    g = torch.Generator().manual_seed(7)
    n, d, k = 300, 20, 140
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    start = torch.randint(0, k, (n,), generator=g)
    start[:k] = torch.arange(k)
    out = hartigan(x, start, k)
    assert _objective(x, out, k) < _objective(x, start, k)
    sizes = torch.bincount(out, minlength=k).double()
    cents = torch.zeros(k, d, dtype=torch.float64).index_add_(0, out, x) / sizes[:, None]
    dist = torch.cdist(x, cents) ** 2
    ar = torch.arange(n)
    s_own = sizes[out]
    remove = torch.where(s_own > 1, s_own / (s_own - 1) * dist[ar, out],
                         torch.full_like(s_own, -1e300))
    add = dist * (sizes / (sizes + 1))[None]
    add[ar, out] = 1e300
    assert float((add.min(1).values - remove).min()) > -1e-9


def test_more_clusters_than_distinct_points_still_gives_exactly_k():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g).repeat(8, 1)  # 4 distinct rows, 32 points
    for k in (5, 16, 31):
        c = cluster(x, k, seed=0)
        assert c.k == k and int(c.sizes().min()) >= 1
        assert c.inertia < 1e-9


def test_fill_empty_moves_members_of_the_largest_cluster():
    from tuneless.cluster import fill_empty

    labels = fill_empty(torch.tensor([0, 0, 0, 1, 1]), 4)
    assert sorted(torch.bincount(labels).tolist()) == [1, 1, 1, 2]


def test_a_registered_clusterer_is_usable_by_name_and_by_fold():
    from tuneless.cluster import CLUSTERERS, Clustering, _finish, register_clusterer

    @register_clusterer("first-k")
    def first_k(x, k, *, seed=0, **_ignored) -> Clustering:  # channel i -> cluster min(i, k-1)
        return _finish(x, torch.clamp(torch.arange(len(x)), max=k - 1))

    try:
        c = cluster(torch.randn(6, 3), 3, "first-k", seed=1, n_init=4)
        assert c.labels.tolist() == [0, 1, 2, 2, 2, 2]
    finally:
        del CLUSTERERS["first-k"]


def test_the_cholesky_embedding_of_wide_groups_keeps_every_distance():
    """From _CHOLESKY_MIN_N channels embed() factors the Gram matrix + εI: each pairwise
    squared distance gains the same 2ε, so k-means partitions rank exactly as before."""
    from tuneless.cluster import _CHOLESKY_MIN_N, embed

    g = torch.Generator().manual_seed(0)
    n = _CHOLESKY_MIN_N
    x = torch.randn(n, 64, generator=g) @ torch.randn(64, 3 * n, generator=g)  # rank 64
    z = embed(x)
    assert z.shape == (n, n)
    want = torch.cdist(x.double(), x.double()).pow(2)
    got = torch.cdist(z.double(), z.double()).pow(2)
    off = ~torch.eye(n, dtype=torch.bool)
    shift = (got - want)[off]
    assert float(shift.std()) <= 1e-4 * float(want[off].mean())  # one constant shift
    assert abs(float(shift.mean())) <= 1e-4 * float(want[off].mean())  # and a tiny one


def test_ward_labels_cut_at_every_k_is_a_nested_sequence_of_partitions():
    from tuneless.cluster import ward_labels

    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(3)).double()
    assert torch.equal(ward_labels(x, 40), torch.arange(40))
    prev = None
    for k in range(40, 0, -1):  # each cut merges clusters of the finer one, never splits
        lab = ward_labels(x, k)
        assert len(set(lab.tolist())) == k
        if prev is not None:
            for c in set(prev.tolist()):
                assert len(set(lab[prev == c].tolist())) == 1
        prev = lab


def test_auto_is_ward_hartigan_on_shallow_cuts_and_kmeans_on_deep_ones():
    """cluster="auto": a wide group's shallow cut takes Ward + Hartigan's partition
    (deterministic, whatever the seed); deeper cuts and narrow groups take k-means'."""
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(3))
    shallow = cluster(x, 225, method="auto", seed=5)
    assert torch.equal(shallow.labels, cluster(x, 225, method="ward-hartigan").labels)
    assert torch.equal(shallow.labels, cluster(x, 225, method="auto", seed=9).labels)
    deep = cluster(x, 150, method="auto", seed=5)
    assert torch.equal(deep.labels, kmeans(x, 150, seed=5).labels)
    narrow = x[:200]  # below the width where Ward takes over
    assert torch.equal(cluster(narrow, 180, method="auto", seed=5).labels,
                       kmeans(narrow, 180, seed=5).labels)
    assert torch.equal(cluster(x, 225, method="auto", shallow_cut=0.9, seed=5).labels,
                       kmeans(x, 225, seed=5).labels)
    # the default cut: Ward + Hartigan from 60% of the channels kept, k-means below
    assert torch.equal(cluster(x, 180, method="auto", seed=5).labels,
                       cluster(x, 180, method="ward-hartigan").labels)
    assert torch.equal(cluster(x, 179, method="auto", seed=5).labels,
                       kmeans(x, 179, seed=5).labels)


def test_reuse_embeddings_computes_each_matrix_once_and_notices_in_place_changes(monkeypatch):
    from tuneless import cluster as cl

    calls = []
    real = cl._embed
    monkeypatch.setattr(cl, "_embed", lambda x: calls.append(1) or real(x))
    x = torch.randn(20, 200, generator=torch.Generator().manual_seed(0))
    cl.embed(x), cl.embed(x)
    assert len(calls) == 2  # outside the context nothing is kept
    with cl.reuse_embeddings():
        a = cl.kmeans(x, 5, seed=1)
        b = cl.cluster(x.detach(), 5, method="ward-hartigan")  # a view of the same storage
        assert len(calls) == 3
        with cl.reuse_embeddings():  # nested: the outer cache serves
            cl.embed(x)
        assert len(calls) == 3
        x.mul_(2)  # changed in place: embedded again, and distances follow the change
        z = cl.embed(x)
        assert len(calls) == 4
        assert torch.allclose(cl._pairwise_sq(z), cl._pairwise_sq(real(x)), atol=1e-6)
        cl.embed(x[:10])  # another shape of the same storage: its own entry
        assert len(calls) == 5
    assert cl._embeddings is None
    assert torch.equal(a.labels, cl.kmeans(x / 2, 5, seed=1).labels)
    assert torch.equal(b.labels, cl.cluster(x / 2, 5, method="ward-hartigan").labels)
    calls.clear()
    with cl.reuse_embeddings(max_bytes=0):  # no room: computed every time
        cl.embed(x), cl.embed(x)
    assert len(calls) == 2
