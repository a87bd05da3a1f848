"""`tuneless bench fold` end to end on a small MLP, and where its repair images come from."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

from benchmarks.suites.fold_bench import (
    METHODS,
    RATIO_METHODS,
    load_any,
    resolve_methods,
    training_pad,
)
from tuneless import TunelessError
from tuneless.checkpoint import save_checkpoint
from tuneless.cli import main
from tuneless.data.loader import TensorLoader, get_dataset
from tuneless.zoo import build_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory):
    try:
        train = get_dataset("fashion-mnist", "train").subset(3000)
    except TunelessError as exc:
        pytest.skip(str(exc))
    torch.manual_seed(0)
    model = build_model("mlp", width=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in TensorLoader(train, 100, shuffle=True, augment=True, pad=2):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "mlp.pt"
    save_checkpoint(path, model.eval(), "mlp", {"width": 0.25}, "fashion-mnist",
                    train_args={"augment": True, "pad": 2})
    return path


def test_training_pad_follows_the_checkpoints_recipe(tmp_path):
    model = build_model("lenet5")
    for args, pad in (({"augment": True, "pad": 4}, 4), ({"augment": False, "pad": 4}, None),
                      (None, None)):
        save_checkpoint(tmp_path / "m.pt", model, "lenet5", {}, "fashion-mnist", train_args=args)
        assert training_pad(str(tmp_path / "m.pt")) == pad


def test_a_saved_external_network_is_read_with_the_dataset_it_records(tmp_path):
    import tuneless

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(8),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 26 * 26, 10)).eval()
    tuneless.save(net, tmp_path / "ext.pt", meta={"dataset": "fashion-mnist"})
    model, arch, ds = load_any(str(tmp_path / "ext.pt"))
    x = torch.randn(2, 1, 28, 28)
    assert (arch, ds) == ("ext", "fashion-mnist") and torch.equal(model(x), net(x))
    assert training_pad(str(tmp_path / "ext.pt")) is None  # no recipe: the plain view
    tuneless.save(net, tmp_path / "bare.pt")
    with pytest.raises(TunelessError, match="records no dataset"):
        load_any(str(tmp_path / "bare.pt"))


def test_bench_fold_writes_rows_with_both_repair_views(mlp_checkpoint, tmp_path):
    for view in ("train", "plain"):
        out = tmp_path / view
        code = main(["bench", "fold", str(mlp_checkpoint), "--methods", "fold-r,prune-l1-bn",
                     "--sparsities", "0.3", "--test-subset", "500", "--repair-images", "256",
                     "--repair-view", view, "--out", str(out), "--name", "tiny"])
        assert code == 0
        text = (out / "tiny.csv").read_text().splitlines()
        rows = list(csv.DictReader(line for line in text if not line.startswith("#")))
        assert {r["method"] for r in rows} == {"fold-r", "prune-l1-bn"}
        for r in rows:
            assert abs(float(r["achieved"]) - 0.3) < 0.02
            assert float(r["accuracy"]) > 0.3  # far above chance after BN re-estimation
        md = (out / "tiny.md").read_text()
        assert ("augmented as in training" in md) == (view == "train")


def test_bench_fold_resume_measures_only_missing_cells(mlp_checkpoint, tmp_path):
    common = ["bench", "fold", str(mlp_checkpoint), "--test-subset", "300",
              "--repair-images", "128", "--out", str(tmp_path), "--name", "r"]
    assert main([*common, "--methods", "fold-ar", "--sparsities", "0.3"]) == 0
    first = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert main([*common, "--methods", "fold-ar,prune-l1", "--sparsities", "0.3,0.5",
                 "--resume"]) == 0
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    cells = [(r["method"], float(r["requested"])) for r in rows]
    assert sorted(cells) == sorted([("fold-ar", 0.3), ("fold-ar", 0.5), ("prune-l1", 0.3),
                                    ("prune-l1", 0.5)])
    kept = next(r for r in rows if r["method"] == "fold-ar" and r["requested"] == "0.3")
    assert kept == first[0]  # the earlier cell is carried over, not re-measured
    assert len({r["dense_acc"] for r in rows}) == 1 and all(r["commit"] for r in rows)
    # without --resume the file starts afresh
    assert main([*common, "--methods", "prune-l1", "--sparsities", "0.5"]) == 0
    assert len(list(csv.DictReader((tmp_path / "r.csv").open()))) == 1


def test_bench_fold_refit_methods_and_their_comparisons(mlp_checkpoint, tmp_path):
    code = main(["bench", "fold", str(mlp_checkpoint), "--methods",
                 "fold-refit,fold-refit-error,prune-l1-refit,fold-naive", "--sparsities", "0.5",
                 "--test-subset", "500", "--repair-images", "256", "--out", str(tmp_path),
                 "--name", "rf"])
    assert code == 0
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "rf.csv").open())}
    assert set(rows) == {"fold-refit", "fold-refit-error", "prune-l1-refit", "fold-naive"}
    for m in ("fold-refit", "fold-refit-error", "prune-l1-refit"):
        assert abs(float(rows[m]["achieved"]) - 0.5) < 0.03
        # the least-squares refit repairs: well above the unrepaired fold
        assert float(rows[m]["accuracy"]) > float(rows["fold-naive"]["accuracy"]) - 0.02
        assert float(rows[m]["accuracy"]) > 0.5
    md = (tmp_path / "rf.md").read_text()
    assert "error − uniform allocation (refit)" in md
    assert "Fold-refit error-alloc − dense" in md


def test_bench_fold_unfused_variants_and_their_comparisons(mlp_checkpoint, tmp_path):
    """fold-ar-unfused / fold-r-unfused cluster and merge the raw layer and its BN (no fusion
    first); they are different folds from the fused ones, and the markdown compares them."""
    code = main(["bench", "fold", str(mlp_checkpoint), "--methods",
                 "fold-ar,fold-ar-unfused,fold-r,fold-r-unfused,prune-l1-bn", "--sparsities",
                 "0.5", "--test-subset", "500", "--repair-images", "256", "--out", str(tmp_path),
                 "--name", "uf"])
    assert code == 0
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "uf.csv").open())}
    for m in ("fold-ar-unfused", "fold-r-unfused"):
        assert abs(float(rows[m]["achieved"]) - 0.5) < 0.03
        assert float(rows[m]["accuracy"]) > 0.3
    md = (tmp_path / "uf.md").read_text()
    assert "Fold-AR unfused − fused" in md and "Fold-R unfused − (L1 + same BN" in md


def test_bench_fold_dir_rows_share_their_deepinversion_images(mlp_checkpoint, tmp_path):
    """fold-dir and prune-l1-dir (L1 + the same data-free repair) run on one synthesis."""
    code = main(["bench", "fold", str(mlp_checkpoint), "--methods", "fold-dir,prune-l1-dir",
                 "--sparsities", "0.3", "--test-subset", "300", "--dir-images", "16",
                 "--dir-batch", "16", "--dir-steps", "2", "--out", str(tmp_path), "--name", "d"])
    assert code == 0
    text = (tmp_path / "d.csv").read_text().splitlines()
    rows = list(csv.DictReader(line for line in text if not line.startswith("#")))
    assert {r["method"] for r in rows} == {"fold-dir", "prune-l1-dir"}
    assert all(r["note"] == "incl. DeepInversion time" and float(r["accuracy"]) > 0.2
               for r in rows)
    assert "2 steps" in (tmp_path / "d.md").read_text()


def test_bench_fold_channel_ratios_are_the_papers_knob(mlp_checkpoint, tmp_path, capsys):
    common = ["bench", "fold", str(mlp_checkpoint), "--test-subset", "300",
              "--repair-images", "128", "--out", str(tmp_path), "--name", "r"]
    assert main([*common, "--channel-ratios", "0.3", "--methods", "fold-ar,prune-l1"]) == 0
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert {(r["method"], r["knob"]) for r in rows} == {("fold-ar", "channel_ratio"),
                                                       ("prune-l1", "channel_ratio")}
    # every group loses 30% of its channels: the layers between two groups lose about half
    assert all(0.3 < float(r["achieved"]) < 0.6 for r in rows)
    assert "uniform channel ratios" in (tmp_path / "r.md").read_text()
    assert main([*common, "--channel-ratios", "0.3", "--methods", "tp-l1"]) != 0
    assert "no channel-ratio mode" in capsys.readouterr().err


def test_channel_ratio_rows_of_the_vgg_sit_beside_the_paper_codes_numbers():
    from benchmarks.suites.fold_bench import ratio_markdown

    base = {"model": "vgg11_bn (vgg11_bn-w0.5-cifar10.pt)", "dense_acc": 0.8526,
            "weights": "models/vgg11_bn-w0.5-cifar10.pt", "test_images": 10000,
            "knob": "channel_ratio", "achieved": 0.51}
    rows = [{**base, "method": "fold-ar", "requested": 0.3, "accuracy": 0.7699},
            {**base, "method": "fold-r", "requested": 0.3, "accuracy": 0.7900}]
    md = ratio_markdown(rows)
    assert "| paper's code, fold-ar | 74.5 |" in md
    assert "| fold-ar here − paper's code | +2.5 |" in md
    assert "| fold-r here − paper's code | -0.7 |" in md
    assert "paper's code" not in ratio_markdown([{**r, "weights": "other.pt"} for r in rows])


def test_default_rows_are_the_methods_that_apply_to_the_points():
    assert resolve_methods(None, "sparsity") == list(METHODS)
    assert resolve_methods(None, "channel_ratio") == list(RATIO_METHODS)
    # the full list written out is not the default: under channel ratios it is refused
    with pytest.raises(TunelessError, match="no channel-ratio mode"):
        resolve_methods(",".join(METHODS), "channel_ratio")
    assert resolve_methods("fold-ar,,prune-l1", "channel_ratio") == ["fold-ar", "prune-l1"]
    with pytest.raises(TunelessError, match="unknown method"):
        resolve_methods("fold-xx", "sparsity")
