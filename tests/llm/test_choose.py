"""The default fold's schedule choice (tuneless.llm.choose): inner-mlp unless it more than
doubles the perplexity on held-out self-sampled rows, then the better of it and paper-mlp."""

import pytest
import torch

import tuneless.llm.choose as choose_module
import tuneless.llm.fold as fold_module
from tests.llm.conftest import tiny_llama
from tuneless.llm import fold_llm
from tuneless.llm.adapters import adapter_for
from tuneless.llm.choose import GUARD_RATIO, HELD_OUT, Candidates, default_candidates
from tuneless.llm.plan import make_plan

OPTS = dict(sparsity=0.1, calib_samples=4, calib_len=8, steps=1)


def mlp_sizes(model):
    return [layer.mlp.gate_proj.out_features for layer in model.model.layers]


def plan_sizes(model, schedule):
    shapes = adapter_for(model).shapes(model)
    return [p.n_mlp for p in make_plan(shapes, sparsity=0.1, schedule=schedule)]


def scripted(monkeypatch, ratios):
    """own_text_perplexity returns 1 for the original model and then `ratios` in the order
    the folds are judged; the held-out rows it is given are recorded."""
    seen, queue = [], list(ratios)

    def fake(model, held):
        seen.append(held)
        return 1.0 if getattr(model, "tuneless_report", None) is None else queue.pop(0)

    monkeypatch.setattr(choose_module, "own_text_perplexity", fake)
    return seen


def test_candidates_by_reach():
    shapes = adapter_for(tiny_llama(layers=6)).shapes(tiny_llama(layers=6))
    assert default_candidates(shapes, 0.1, "kv-groups") == Candidates("inner-mlp", "paper-mlp")
    # paper-mlp cannot remove 20% of this model: flat-mlp (its layers, one ratio, however
    # deep) guards inner-mlp there; beyond inner-mlp's reach uniform, nothing to choose
    assert default_candidates(shapes, 0.2, "kv-groups") == Candidates("inner-mlp", "flat-mlp")
    assert default_candidates(shapes, 0.25, "kv-groups") == Candidates("uniform", None)
    two = adapter_for(tiny_llama()).shapes(tiny_llama())  # 2 layers: inner-mlp folds none
    assert default_candidates(two, 0.1, "kv-groups") == Candidates("paper-mlp", None)


def test_guard_holds_keeps_inner_mlp(monkeypatch):
    m = tiny_llama(layers=6)
    seen = scripted(monkeypatch, [GUARD_RATIO])  # exactly at the ratio: kept
    f = fold_llm(m, **OPTS)
    assert mlp_sizes(f) == plan_sizes(m, "inner-mlp")
    choice = f.tuneless_report["schedule_choice"]
    assert choice["kept"] == "inner-mlp" and list(choice["own_text_ratio"]) == ["inner-mlp"]
    assert seen[0].shape == (HELD_OUT, OPTS["calib_len"])


def test_guard_fails_and_paper_mlp_is_better(monkeypatch):
    m = tiny_llama(layers=6)
    scripted(monkeypatch, [10.0, 1.5])
    f = fold_llm(m, **OPTS)
    assert mlp_sizes(f) == plan_sizes(m, "paper-mlp")
    choice = f.tuneless_report["schedule_choice"]
    assert choice["kept"] == "paper-mlp"
    assert choice["own_text_ratio"] == {"inner-mlp": 10.0, "paper-mlp": 1.5}


def test_beyond_paper_mlp_reach_flat_mlp_guards(monkeypatch):
    """At a budget paper-mlp cannot reach, a failing inner-mlp is compared with flat-mlp
    (past the defaults' layer cap), the better one kept."""
    m = tiny_llama(layers=6)
    scripted(monkeypatch, [10.0, 1.5])
    f = fold_llm(m, **{**OPTS, "sparsity": 0.2})
    shapes = adapter_for(m).shapes(m)
    assert mlp_sizes(f) == [p.n_mlp for p in make_plan(shapes, sparsity=0.2,
                                                       schedule="flat-mlp")]
    assert f.tuneless_report["schedule_choice"]["own_text_ratio"] == {"inner-mlp": 10.0,
                                                                      "flat-mlp": 1.5}


def test_guard_fails_but_paper_mlp_is_worse(monkeypatch):
    m = tiny_llama(layers=6)
    scripted(monkeypatch, [3.0, 4.0])
    f = fold_llm(m, **OPTS)
    assert mlp_sizes(f) == plan_sizes(m, "inner-mlp")
    assert f.tuneless_report["schedule_choice"]["kept"] == "inner-mlp"


@pytest.mark.parametrize("given", [{"schedule": "inner-mlp"}, {"repair": "none"},
                                   {"head_ratio": 0.0}])
def test_no_choice_when_the_schedule_is_given_or_nothing_repairs(monkeypatch, given):
    scripted(monkeypatch, [])  # any judging would pop from an empty list
    f = fold_llm(tiny_llama(layers=6), **{**OPTS, **given})
    assert "schedule_choice" not in f.tuneless_report


def test_held_out_rows_stay_out_of_the_repair(monkeypatch):
    """The first fold is repaired on the calibration rows an unguarded fold draws; the
    judged rows are the HELD_OUT self-sampled rows after them (one batch)."""
    m = tiny_llama(layers=6)
    seen = scripted(monkeypatch, [1.0])
    used = []
    real = fold_module._fold_once

    def spy(*args, calib=None, **kwargs):
        used.append(calib)
        return real(*args, calib=calib, **kwargs)

    monkeypatch.setattr(fold_module, "_fold_once", spy)
    fold_llm(m, **OPTS)
    n, length = OPTS["calib_samples"], OPTS["calib_len"]
    batch = fold_module.self_generated(m, None, n + HELD_OUT, length, 0)
    assert torch.equal(used[0], fold_module.self_generated(m, None, n, length, 0))
    assert torch.equal(used[0], batch[:n]) and torch.equal(seen[0], batch[n:])


def test_kept_primary_is_the_unguarded_fold():
    """Guarding changes nothing when the primary is kept: the same calibration draw, the
    same model as inner-mlp asked for by name (where nothing is chosen)."""
    m = tiny_llama(layers=6)
    guarded = fold_llm(m, **OPTS)
    assert guarded.tuneless_report["schedule_choice"]["kept"] == "inner-mlp"
    named = fold_llm(m, **OPTS, schedule="inner-mlp")
    x = torch.randint(0, 90, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(guarded(x).logits, named(x).logits)


def test_real_judgement_on_a_tiny_model(tmp_path):
    """Measured on a tiny model, recorded in the report and in the saved config (as the
    streamed fold records it), not in the original's config."""
    from tuneless.llm import save_folded
    from tuneless.llm.choose import describe_choice

    m = tiny_llama(layers=6)
    f = fold_llm(m, **OPTS)
    choice = f.tuneless_report["schedule_choice"]
    assert all(r > 0 and r == r for r in choice["own_text_ratio"].values())
    assert choice["kept"] in describe_choice(choice)
    assert not hasattr(m.config, "tuneless_schedule_choice")
    save_folded(f, tmp_path / "out")
    import json

    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["tuneless_schedule_choice"] == choice



@pytest.mark.parametrize("repair", ["self", "none"])
def test_obs_keeps_its_fixed_default_schedule(monkeypatch, repair):
    """Structured OBS is not guarded: the own-text check did not separate its schedules on
    Gemma 3 (docs/llm.md "Structured OBS"), so its default stays flat-mlp."""
    from tuneless.llm import obs_prune_llm

    scripted(monkeypatch, [])
    m = tiny_llama(layers=6)
    small = obs_prune_llm(m, 0.1, repair=repair, calib_samples=4, calib_len=8)
    assert "schedule_choice" not in small.tuneless_report
    assert mlp_sizes(small) == plan_sizes(m, "flat-mlp")
