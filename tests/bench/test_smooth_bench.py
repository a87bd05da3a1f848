"""`tuneless bench smooth` end to end on two LeNet-5s trained for a few seconds on Fashion-MNIST."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

from tuneless import TunelessError
from tuneless.checkpoint import save_checkpoint
from tuneless.cli import main
from tuneless.data.loader import TensorLoader, get_dataset
from tuneless.smooth import SmoothPenalty
from tuneless.zoo import build_model

torch.set_num_threads(1)


def _quick_checkpoint(path, kind: str | None) -> None:
    train = get_dataset("fashion-mnist", "train").subset(3000)
    torch.manual_seed(0)
    model = build_model("lenet5")
    penalty = SmoothPenalty(model, kind, lam=0.5, relative=True) if kind else None
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in TensorLoader(train, 100, shuffle=True):
        loss = F.cross_entropy(model(x), y) + (penalty(model) if penalty else 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(path, model.eval(), "lenet5", {"num_classes": 10}, "fashion-mnist")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    try:
        get_dataset("fashion-mnist", "test")
    except TunelessError as exc:
        pytest.skip(str(exc))
    d = tmp_path_factory.mktemp("ckpt")
    _quick_checkpoint(d / "plain.pt", None)
    _quick_checkpoint(d / "d2.pt", "d2")
    return d


def test_bench_writes_csv_markdown_and_plots(checkpoints, tmp_path):
    out = tmp_path / "results"
    code = main(["bench", "smooth", "--plain", str(checkpoints / "plain.pt"),
                 "--d2", str(checkpoints / "d2.pt"), "--methods", "svd,magnitude",
                 "--sparsities", "0.3,0.6", "--limit", "1000", "--out-dir", str(out),
                 "--name", "tiny"])
    assert code == 0
    lines = (out / "tiny.csv").read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1].startswith("# commit")
    rows = list(csv.DictReader(lines[2:]))
    assert len(rows) == 2 * (1 + 2 * 2)
    dense = {r["model"]: float(r["accuracy"]) for r in rows if r["method"] == "dense"}
    assert dense["plain"] > 0.3 and dense["d2"] > 0.3  # well above chance (0.1) after 30 steps
    for r in rows:
        if r["method"] != "dense":
            assert abs(float(r["achieved"]) - float(r["requested"])) <= 0.01, r
            assert 0.0 <= float(r["accuracy"]) <= 1.0
    md = (out / "tiny.md").read_text()
    assert "Produced by `" in md and "| plain | svd |" in md and "| d2 | magnitude |" in md
    assert "rank/full @95%" in md
    for png in ("tiny.png", "tiny_spectra.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_bench_reports_bad_arguments(checkpoints, tmp_path, capsys):
    assert main(["bench", "smooth", "--out-dir", str(tmp_path)]) == 1
    assert "no checkpoints given" in capsys.readouterr().err
    assert main(["bench", "smooth", "--plain", str(tmp_path / "missing.pt")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["bench", "smooth", "--plain", str(checkpoints / "plain.pt"),
                 "--sparsities", "0.5,1.2"]) == 1
    assert "--sparsities must be fractions" in capsys.readouterr().err
    assert main(["bench", "smooth", "--plain", str(checkpoints / "plain.pt"),
                 "--methods", "svd,zip"]) == 1
    assert "unknown method 'zip'" in capsys.readouterr().err


def test_rerun_measures_only_missing_rows(checkpoints, tmp_path, monkeypatch):
    from benchmarks.suites import smooth_bench

    out = tmp_path / "results"
    args = ["bench", "smooth", "--plain", str(checkpoints / "plain.pt"), "--methods", "svd",
            "--sparsities", "0.3,0.6", "--limit", "500", "--out-dir", str(out), "--name", "r"]
    calls = []
    real = smooth_bench.compress_and_score

    def counting(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run dies after its first compressed row
        return real(*a, **k)

    monkeypatch.setattr(smooth_bench, "compress_and_score", counting)
    assert main(args) != 0  # interrupted (the CLI turns Ctrl-C into an exit status)
    assert (out / "r.rows.csv").is_file()
    calls.clear()
    monkeypatch.setattr(smooth_bench, "compress_and_score",
                        lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    assert main(args) == 0
    assert len(calls) == 1  # 0.3 was kept; only 0.6 is measured again
    rows = list(csv.DictReader((out / "r.csv").read_text().splitlines()[2:]))
    assert [r["method"] for r in rows] == ["dense", "svd", "svd"]
    calls.clear()
    assert main([*args, "--fresh"]) == 0 and len(calls) == 2


def test_methods_whose_repair_needs_data_get_the_repair_images(checkpoints, tmp_path,
                                                                monkeypatch):
    from benchmarks.suites import smooth_bench

    out = tmp_path / "results"
    seen = {}
    real = smooth_bench.compress_and_score

    def spying(method, name, *a, **k):
        seen[name] = a[-1] if len(a) == 6 else k.get("data")
        return real(method, name, *a, **k)

    monkeypatch.setattr(smooth_bench, "compress_and_score", spying)
    assert main(["bench", "smooth", "--plain", str(checkpoints / "plain.pt"), "--methods",
                 "fold-refit,svd", "--sparsities", "0.3", "--limit", "500",
                 "--repair-images", "64", "--out-dir", str(out), "--name", "d"]) == 0
    assert seen["svd"] is None and len(seen["fold-refit"]) == 64
    rows = list(csv.DictReader((out / "d.csv").read_text().splitlines()[2:]))
    refit = next(r for r in rows if r["method"] == "fold-refit")
    assert 0.0 <= float(refit["accuracy"]) <= 1.0  # measured, not "needs data"
