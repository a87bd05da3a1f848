"""Every row of the LLM benchmark builds through the public API on a tiny Llama, meets the
budget and runs; the markdown names each row's calibration source."""

import argparse

import pytest
import torch

from benchmarks.suites.llm_bench import METHODS, _write_outputs, build
from tests.llm.conftest import tiny_llama
from tuneless.llm import block_params

CALIB = {"self": torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(1)),
         "docs": torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(2))}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_row_builds_at_the_budget(method):
    model = tiny_llama(mlp=96, layers=4)
    model.config.bos_token_id, model.config.eos_token_id = 1, 2
    small = build(method, model, None, 0.2, CALIB)
    removed = 1 - block_params(small) / block_params(model)
    assert 0.17 <= removed <= 0.3, removed
    with torch.no_grad():
        assert torch.isfinite(small(CALIB["self"]).logits).all()


def test_the_table_marks_data_free_rows(tmp_path, monkeypatch):
    import benchmarks.suites.llm_bench as bench

    monkeypatch.setattr(bench, "_plot", lambda *a, **k: None)
    rows = [{"method": "dense", "target": "0.0", "removed": "0.000", "ppl": "30.0",
             "seconds": "0", "cpu_seconds": "0", "note": ""},
            {"method": "fold", "target": "0.2", "removed": "0.200", "ppl": "45.0",
             "seconds": "60", "cpu_seconds": "60", "note": ""},
            {"method": "wanda-sp", "target": "0.2", "removed": "0.200", "ppl": "70.0",
             "seconds": "50", "cpu_seconds": "50", "note": ""},
            {"method": "flap", "target": "0.4", "removed": "", "ppl": "", "seconds": "",
             "cpu_seconds": "", "note": "cannot remove 40%"}]
    args = argparse.Namespace(tokens=2048, seq_len=512, threads=1, model="smollm2", out=tmp_path)
    _write_outputs(rows, args, "x", "provenance\n", 4096)
    md = (tmp_path / "llm_x.md").read_text()
    assert "| fold | the default" in md and "none (data-free) |" in md
    assert "| wanda-sp | Wanda-sp as published: uniform, no repair | Python docs |" in md
    assert "| 1.50 |" in md and "cannot remove 40%" in md
    rows += [{"method": "dense (first 16384 tokens)", "target": "0.0", "removed": "0.000",
              "ppl": "20.0", "seconds": "", "cpu_seconds": "", "note": ""},
             {"method": "fold (first 16384 tokens)", "target": "0.2", "removed": "0.200",
              "ppl": "36.0", "seconds": "", "cpu_seconds": "", "note": ""}]
    _write_outputs(rows, args, "x", "provenance\n", 4096)
    md = (tmp_path / "llm_x.md").read_text()  # each budget against dense on the same tokens
    assert "| 36.00 | 1.80 |" in md and "| 20.00 | 1.00 |" in md


def test_baselines_take_the_schedule_the_fold_kept(monkeypatch):
    """Equal terms: after the `fold` row, the rows on "fold's schedule" use the schedule its
    own-text check kept (here paper-mlp, forced by a failing inner-mlp fold)."""
    import benchmarks.suites.llm_bench as bench
    import tuneless.llm.choose as choose_module

    monkeypatch.setattr(bench, "_KEPT", {})
    judged = iter([1.0, 10.0, 1.5])  # the original, the inner-mlp fold, the paper-mlp fold
    monkeypatch.setattr(choose_module, "own_text_perplexity", lambda model, held: next(judged))
    model = tiny_llama(mlp=96, layers=6)
    model.config.bos_token_id, model.config.eos_token_id = 1, 2
    assert bench.schedule_for(model, 0.1) == "inner-mlp"  # before the fold row: its first try
    small = build("fold", model, None, 0.1, CALIB)
    assert small.tuneless_report["schedule_choice"]["kept"] == "paper-mlp"
    assert bench.schedule_for(model, 0.1) == "paper-mlp"


def test_a_resumed_run_keeps_the_schedule_the_fold_row_noted(monkeypatch):
    """Rows of an interrupted run: the fold row's note names its kept schedule, and the
    baselines of the resumed run take it without folding again."""
    import benchmarks.suites.llm_bench as bench

    monkeypatch.setattr(bench, "_KEPT", {})
    bench.remember_kept([{"method": "fold", "target": "0.2", "note": "schedule paper-mlp"},
                         {"method": "obs", "target": "0.3", "note": ""}])
    model = tiny_llama(mlp=96, layers=6)
    assert bench.schedule_for(model, 0.2) == "paper-mlp"
    assert 0.3 not in bench._KEPT  # only fold rows name a schedule


def test_extra_token_budgets_parse_or_name_the_problem():
    from benchmarks.suites.llm_bench import _budgets
    from tuneless.errors import TunelessError

    assert _budgets("") == [] and _budgets("16384") == [16384]
    assert _budgets("16384, 32768") == [16384, 32768]
    for bad in ("16k", "0", "-5"):
        with pytest.raises(TunelessError, match="--also-tokens"):
            _budgets(bad)
