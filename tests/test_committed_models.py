"""The committed checkpoints match their manifest, and the manifest's commands are exact."""

import importlib.util
import json
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest

from tuneless.checkpoint import file_sha256, load_checkpoint
from tuneless.cli import main

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((ROOT / "models" / "manifest.json").read_text())["models"]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def has_data(name: str) -> bool:
    from tuneless.data.loader import default_data_path

    return FASHION.is_dir() if name == "fashion-mnist" else default_data_path(name) is not None


def load_script():
    spec = importlib.util.spec_from_file_location("make_manifest",
                                                  ROOT / "scripts" / "make_manifest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_manifest_check_passes(capsys):
    assert load_script().main(["--check"]) == 0
    assert "manifest ok" in capsys.readouterr().out


def test_models_folder_stays_small():
    total = sum(e["bytes"] for e in MANIFEST)
    assert total < 40 * 2**20
    assert {"lenet5", "mlp"} <= {e["arch"] for e in MANIFEST}


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_command_reproduces_the_training_arguments(entry, monkeypatch):
    """Parse the manifest's command with the real CLI: it gives the stored TrainConfig."""
    seen = {}

    def fake_train(cfg, out, extra_loss=None):
        seen["cfg"], seen["out"] = cfg, out
        return {"test_accuracy": 0.0, "dataset": cfg.dataset}

    monkeypatch.setattr("tuneless.train.train", fake_train)
    words = shlex.split(entry["command"])
    assert words[:2] == ["tuneless", "train"]
    assert main(words[1:]) == 0
    stored = load_checkpoint(ROOT / entry["file"]).tuneless_meta["train_args"]
    got = asdict(seen["cfg"])
    for key, value in got.items():
        if key == "pad" and not got["augment"]:
            continue
        assert stored.get(key, value) == value, key
    assert seen["out"] == entry["file"]
    assert file_sha256(ROOT / entry["file"]) == entry["sha256"]


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("entry", [e for e in MANIFEST if e["dataset"] == "fashion-mnist"],
                         ids=lambda e: e["file"])
def test_eval_reproduces_manifest_accuracy(entry, tmp_path):
    out = tmp_path / "r.json"
    assert main(["eval", str(ROOT / entry["file"]), "--no-latency", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["eval_images"] == 10_000
    assert abs(row["top1"] - entry["test_accuracy"]) <= 0.001


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_eval_reproduces_check_accuracy_on_a_subset(entry, tmp_path):
    """Every model (CIFAR ones too) on the manifest's seeded 1000-image subset, via the CLI."""
    if not has_data(entry["dataset"]):
        pytest.skip(f"no {entry['dataset']} test data here")
    out = tmp_path / "r.json"
    assert main(["eval", str(ROOT / entry["file"]), "--limit", str(entry["check_images"]),
                 "--no-latency", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["eval_images"] == entry["check_images"]
    assert abs(row["top1"] - entry["check_accuracy"]) <= 0.001
