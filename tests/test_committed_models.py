"""The committed checkpoints match their manifest, and the manifest's commands are exact."""

import functools
import importlib.util
import json
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest

from tuneless.checkpoint import file_sha256, load_checkpoint
from tuneless.cli import main

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = [e for folder in ("models", "models/smooth")
            for e in json.loads((ROOT / folder / "manifest.json").read_text())["models"]]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def has_data(name: str) -> bool:
    from tuneless.data.loader import default_data_path

    return FASHION.is_dir() if name == "fashion-mnist" else default_data_path(name) is not None


@functools.cache
def load_script():
    """scripts/make_manifest.py as a module (loaded once: stored_stages recurses)."""
    spec = importlib.util.spec_from_file_location("make_manifest",
                                                  ROOT / "scripts" / "make_manifest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_manifest_check_passes(capsys):
    assert load_script().main(["--check"]) == 0
    assert "manifest ok" in capsys.readouterr().out


def test_manifest_shows_init_paths_repo_relative():
    shown = load_script().shown_path
    assert shown("/work/main/models/resnet56-cifar10.pt") == "models/resnet56-cifar10.pt"
    assert shown("/tmp/x/models/smooth/a.pt") == "models/smooth/a.pt"
    assert shown("/root/runs/a.pt") == "/root/runs/a.pt"
    assert shown("models/a.pt") == "models/a.pt"


def test_models_folder_stays_small():
    """Issue 2's budget: all committed weights (models/ and models/smooth/) under 40 MB."""
    total = sum(p.stat().st_size for p in (ROOT / "models").rglob("*.pt")
                if not p.name.endswith(".resume.pt"))
    assert total < 40_000_000, f"models/ holds {total / 1e6:.1f} MB of weights"
    assert {"lenet5", "mlp"} <= {e["arch"] for e in MANIFEST}


def test_committed_files_are_in_the_reproducible_layout(tmp_path):
    """Re-saving a committed file gives its exact bytes, so its sha256 identifies it."""
    from tuneless.checkpoint import read_torch_file
    from tuneless.io_atomic import atomic_torch_save

    for path in sorted((ROOT / "models").rglob("*.pt")):
        atomic_torch_save(read_torch_file(path), tmp_path / "again.pt")
        assert file_sha256(tmp_path / "again.pt") == file_sha256(path), path.name


def stored_stages(train_args: dict, out: str) -> list[tuple[dict, str]]:
    """Each step's stored arguments and output, paths as the manifest shows them; a weight
    average's ingredients contribute their own steps, each output once."""
    shown = load_script().shown_path
    init = train_args.get("init_record")
    if init:
        earlier = stored_stages(init["train_args"], shown(init["path"]))
    else:
        earlier = [s for i in (train_args.get("average_record") or {}).get("ingredients", [])
                   for s in stored_stages(i["train_args"], shown(i["path"]))]
    if train_args.get("init"):
        train_args = {**train_args, "init": shown(train_args["init"])}
    once = []
    for args, path in earlier:
        if path not in [p for _, p in once]:
            once.append((args, path))
    return [*once, (train_args, out)]


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_command_reproduces_the_training_arguments(entry, monkeypatch):
    """Parse the manifest's command (one `tuneless train` or `tuneless average` per step,
    joined by &&) with the real CLI: each gives the arguments stored for that step."""
    seen = []

    def fake_train(cfg, out, extra_loss=None):
        seen.append(("train", cfg, out))
        return {"test_accuracy": 0.0, "dataset": cfg.dataset}

    def fake_average(paths, out, data=None, batch_size=128, seed=0):
        seen.append(("average", (list(paths), batch_size, seed), out))
        return {"test_accuracy": 0.0, "dataset": "cifar10"}

    monkeypatch.setattr("tuneless.train.train", fake_train)
    monkeypatch.setattr("tuneless.average.average_checkpoints", fake_average)
    words = shlex.split(entry["command"])
    commands, current = [], []
    for w in [*words, "&&"]:
        if w == "&&":
            commands.append(current)
            current = []
        else:
            current.append(w)
    meta = load_checkpoint(ROOT / entry["file"]).tuneless_meta
    stored = stored_stages(meta["train_args"], entry["file"])
    halved = None  # a float16 copy: the last step converts the trained file
    if commands[-1][:2] == ["python", "scripts/halve_checkpoint.py"]:
        halved = commands.pop()
        assert halved[3] == entry["file"] and meta.get("stored_dtype") == "float16"
        stored[-1] = (stored[-1][0], halved[2])  # the training step wrote the float32 file
    assert len(commands) == len(stored)
    for command in commands:
        assert command[0] == "tuneless" and command[1] in ("train", "average")
        assert main(command[1:]) == 0
    shown = load_script().shown_path
    for (kind, got, out), (args, want_out) in zip(seen, stored, strict=True):
        assert out == want_out
        if kind == "average":
            record = args["average_record"]
            assert got == ([shown(i["path"]) for i in record["ingredients"]],
                           record["batch_size"], record["seed"])
            continue
        got = asdict(got)
        for key, value in got.items():
            if key == "pad" and not got["augment"]:
                continue
            assert args.get(key, value) == value, key
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


def test_a_warm_started_checkpoint_gets_one_command_per_stage():
    mod = load_script()
    first = {"arch": "resnet56", "epochs": 30, "threads": 2, "eval_every": 100,
             "train_seconds": 100.0}
    second = {"arch": "resnet56", "epochs": 12, "lr": 0.02, "schedule": "cosine",
              "init": "runs/a.pt", "train_seconds": 20.0,
              "init_record": {"path": "runs/a.pt", "train_args": first, "train_seconds": 100.0}}
    command = mod.full_command(second, "models/b.pt")
    assert command == ("tuneless train resnet56 -o runs/a.pt --threads 2 --eval-every 100 && "
                       "tuneless train resnet56 -o models/b.pt --epochs 12 --lr 0.02 "
                       "--schedule cosine --init runs/a.pt")
    from tuneless.train import total_train_seconds

    assert total_train_seconds(second) == 120.0


def test_an_average_lists_its_ingredients_steps_once_then_averages():
    mod = load_script()
    first = {"arch": "resnet56", "epochs": 30, "threads": 2, "train_seconds": 100.0}
    second = {"arch": "resnet56", "epochs": 8, "init": "/w/models/a.pt", "train_seconds": 20.0,
              "init_record": {"path": "/w/models/a.pt", "train_args": first}}
    avg = {"augment": True, "pad": 4, "average_record": {
        "ingredients": [{"path": "models/a.pt", "train_args": first},
                        {"path": "/w/models/b.pt", "train_args": second}],
        "batch_size": 128, "seed": 0, "seconds": 5.0}}
    command = mod.full_command(avg, "models/c.pt")
    assert command == ("tuneless train resnet56 -o models/a.pt --threads 2 && "
                       "tuneless train resnet56 -o models/b.pt --epochs 8 --init models/a.pt && "
                       "tuneless average models/a.pt models/b.pt -o models/c.pt")
    assert sum(mod.stage_seconds(a) for a, _ in mod.stages(avg, "models/c.pt")) == 125.0
