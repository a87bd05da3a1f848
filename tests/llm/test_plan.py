"""Per-layer plans from a schedule and a budget (no model needed: layer shapes only)."""

import pytest

from tuneless.errors import TunelessError
from tuneless.llm.plan import (
    OVERSHOOT,
    Shape,
    default_schedule,
    inner_layers,
    make_plan,
    removed_fraction,
    resolve_plan,
)

SHAPE = Shape(hidden=64, head_dim=16, n_q=4, n_kv=2, n_mlp=128)


@pytest.mark.parametrize("n, first", [(3, 1), (12, 1), (18, 2), (30, 3), (80, 8)])
def test_inner_layers_leave_the_first_tenth_and_the_last_whole(n, first):
    assert inner_layers(n) == range(first, n - 1)


def test_a_model_too_shallow_for_inner_layers_has_none():
    assert len(inner_layers(1)) == len(inner_layers(2)) == 0


def test_inner_mlp_meets_the_budget_with_heads_kept():
    shapes = [SHAPE] * 30
    plans = make_plan(shapes, sparsity=0.2, schedule="inner-mlp")
    removed = removed_fraction(shapes, plans)
    one_channel = 3 * SHAPE.hidden / (30 * SHAPE.params())  # gate row, up row, down column
    assert 0.2 <= removed < 0.2 + 26 * one_channel
    assert all((p.n_q, p.n_kv) == (4, 2) for p in plans)
    assert [p.n_mlp for p in plans[:3]] == [128] * 3 and plans[-1].n_mlp == 128
    assert len({p.n_mlp for p in plans[3:-1]}) == 1 and plans[3].n_mlp < 128


def test_inner_mlp_with_a_ratio_and_no_budget():
    plans = make_plan([SHAPE] * 12, sparsity=None, schedule="inner-mlp", mlp_ratio=0.5)
    assert [p.n_mlp for p in plans] == [128] + [64] * 10 + [128]


@pytest.mark.parametrize("n, folded", [(30, range(10, 28)), (18, range(6, 17))])
def test_flat_mlp_folds_paper_mlps_layers_with_one_ratio(n, folded):
    shapes = [SHAPE] * n
    flat = make_plan(shapes, sparsity=0.2, schedule="flat-mlp")
    paper = make_plan(shapes, sparsity=0.2, schedule="paper-mlp")
    assert [i for i, p in enumerate(flat) if p.n_mlp < 128] == list(folded)
    assert [i for i, p in enumerate(paper) if p.n_mlp < 128] == list(folded)
    assert len({flat[i].n_mlp for i in folded}) == 1
    assert all((p.n_q, p.n_kv) == (4, 2) for p in flat)
    assert 0.2 <= removed_fraction(shapes, flat) < 0.21
    by_ratio = make_plan(shapes, sparsity=None, schedule="flat-mlp", mlp_ratio=0.5)
    assert {by_ratio[i].n_mlp for i in folded} == {64}


def test_a_budget_the_inner_layers_cannot_hold_is_refused():
    with pytest.raises(TunelessError, match="cannot remove"):
        make_plan([SHAPE] * 3, sparsity=0.5, schedule="inner-mlp")


def test_an_unknown_schedule_is_named_with_the_choices():
    with pytest.raises(TunelessError, match="'inner-mlp', 'flat-mlp', 'paper-mlp'"):
        make_plan([SHAPE] * 4, sparsity=0.2, schedule="zigzag")


def test_the_default_schedule_is_paper_mlp_then_inner_mlp_then_uniform():
    shapes = [SHAPE] * 30
    assert default_schedule(shapes, 0.2) == "paper-mlp"
    assert default_schedule(shapes, 0.45) == "inner-mlp"  # beyond paper-mlp's 19 layers
    assert default_schedule([SHAPE] * 2, 0.45) == "uniform"  # no inner layers to fold
    plans = resolve_plan(shapes, sparsity=0.45)
    assert all((p.n_q, p.n_kv) == (4, 2) for p in plans)
    assert plans[0].n_mlp == plans[-1].n_mlp == 128


def test_obs_defaults_to_flat_mlp_then_inner_mlp():
    from tuneless.llm.plan import OBS_DEFAULTS

    shapes = [SHAPE] * 30
    assert default_schedule(shapes, 0.2, order=OBS_DEFAULTS) == "flat-mlp"
    assert default_schedule(shapes, 0.5, order=OBS_DEFAULTS) == "inner-mlp"
    # reachable by flat-mlp, but only by taking > 75% of its layers' channels
    flat = make_plan(shapes, sparsity=0.3, schedule="flat-mlp")
    assert min(p.n_mlp for p in flat) < 0.25 * 128
    assert default_schedule(shapes, 0.3, order=OBS_DEFAULTS) == "inner-mlp"
    assert resolve_plan(shapes, sparsity=0.2, defaults=OBS_DEFAULTS) == make_plan(
        shapes, sparsity=0.2, schedule="flat-mlp")
    assert resolve_plan(shapes, sparsity=0.2) == make_plan(shapes, sparsity=0.2,
                                                           schedule="paper-mlp")


def test_uniform_keeps_to_the_budget_when_a_head_unit_would_overshoot_it():
    # two layers, two kv groups: one kv group is a third of the blocks, the closest pair to
    # one common ratio at 20%, but it would remove 33%; the MLP alone can remove 20%
    tiny = [Shape(64, 16, 4, 2, 32)] * 2
    for s in (0.2, 0.3):
        plans = make_plan(tiny, sparsity=s, schedule="uniform")
        assert s <= removed_fraction(tiny, plans) <= s + OVERSHOOT
        assert all(p.n_kv == 2 for p in plans)
    plans = make_plan(tiny, sparsity=0.45, schedule="uniform")  # MLPs alone cannot (cap 95%)
    assert plans[0].n_kv == 1 and 0.45 <= removed_fraction(tiny, plans) <= 0.45 + OVERSHOOT
    smol = [Shape(576, 64, 9, 3, 1536)] * 30  # heads are fine-grained enough: a kv group goes
    assert make_plan(smol, sparsity=0.2, schedule="uniform")[0].n_kv == 2
