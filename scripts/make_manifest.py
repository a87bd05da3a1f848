"""Write models/manifest.json and models/MANIFEST.md from the committed checkpoints.

Each entry says how to remake the file (the `tuneless train` command, rebuilt from the
training arguments stored in the checkpoint), its test accuracy, training time, sha256,
and when and where it was trained. Run after adding a checkpoint:

    python scripts/make_manifest.py            # update the manifest
    python scripts/make_manifest.py --check    # verify files against it (exit 1 on mismatch)

An entry whose sha256 is unchanged, or whose file is the same training run stored in
another dtype, keeps its recorded date and machine; a new or retrained file gets today's
date and this machine (train on the machine you run this on).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tuneless.checkpoint import file_sha256, is_checkpoint, read_torch_file  # noqa: E402
from tuneless.io_atomic import atomic_write_text  # noqa: E402
from tuneless.provenance import machine  # noqa: E402
from tuneless.report import render_markdown  # noqa: E402
from tuneless.train import TrainConfig  # noqa: E402

# TrainConfig field -> `tuneless train` option (fields not listed are positional or special)
OPTIONS = {
    "dataset": "--dataset", "data": "--data", "epochs": "--epochs", "batch_size": "--batch-size",
    "lr": "--lr", "momentum": "--momentum", "weight_decay": "--weight-decay",
    "schedule": "--schedule", "label_smoothing": "--label-smoothing", "pad": "--pad",
    "seed": "--seed", "threads": "--threads", "smooth": "--smooth",
    "smooth_lambda": "--smooth-lambda", "smooth_every": "--smooth-every",
    "eval_every": "--eval-every", "init": "--init", "swa_epochs": "--swa-epochs",
    "swa_lr": "--swa-lr",
}


def shown_path(path: str) -> str:
    """A checkpoint path as the manifest shows it: an absolute path into some clone's models/
    folder (what `--init` recorded) becomes repo-relative, so commands work in any clone."""
    parts = Path(path).parts
    if Path(path).is_absolute() and "models" in parts:
        last = len(parts) - 1 - parts[::-1].index("models")
        return Path(*parts[last:]).as_posix()
    return path


def train_command(train_args: dict, out: str) -> str:
    """The `tuneless train` command line that reproduces these training arguments."""
    defaults = vars(TrainConfig())
    cli_defaults = {**defaults, "epochs": 30, "pad": 4}
    words = ["tuneless", "train", train_args["arch"], "-o", out]
    kwargs = dict(train_args.get("arch_kwargs") or {})
    if "width" in kwargs:
        words += ["--width", str(kwargs.pop("width"))]
    if kwargs:
        words += ["--arch-kwargs", json.dumps(kwargs)]
    for field, flag in OPTIONS.items():
        value = train_args.get(field, defaults.get(field))
        if field == "init" and value is not None:
            value = shown_path(value)
        if field == "pad" and not train_args.get("augment", True):
            continue  # no crops, so the padding does not matter
        if value is not None and value != cli_defaults.get(field):
            words += [flag, str(value)]
    if not train_args.get("augment", True):
        words.append("--no-augment")
    if train_args.get("smooth_relative"):
        words.append("--smooth-relative")
    return shlex.join(words)


def average_command(train_args: dict, out: str) -> str:
    """The `tuneless average` command line of a weight-averaged checkpoint."""
    record = train_args["average_record"]
    words = ["tuneless", "average", *(shown_path(i["path"]) for i in record["ingredients"]),
             "-o", out]
    if record.get("batch_size", 128) != 128:
        words += ["--batch-size", str(record["batch_size"])]
    if record.get("seed", 0) != 0:
        words += ["--seed", str(record["seed"])]
    return shlex.join(words)


def stage_command(train_args: dict, out: str) -> str:
    if "average_record" in train_args:
        return average_command(train_args, out)
    return train_command(train_args, out)


def stages(train_args: dict, out: str) -> list[tuple[dict, str]]:
    """(arguments, output path) of every step, first first, each once: a checkpoint trained
    with --init records the checkpoint it started from, which may itself have one; a weight
    average records its ingredients, whose recipes often share their first stages."""
    init = train_args.get("init_record")
    if init:
        earlier = stages(init["train_args"], shown_path(init["path"]))
    else:
        earlier = [s for i in (train_args.get("average_record") or {}).get("ingredients", [])
                   for s in stages(i["train_args"], shown_path(i["path"]))]
    unique: dict[str, tuple[dict, str]] = {}
    for a, o in earlier:
        unique.setdefault(stage_command(a, o), (a, o))
    return [*unique.values(), (train_args, out)]


def stage_seconds(train_args: dict) -> float:
    """Time of one step alone: training, or the BN pass and evaluation of an average."""
    own = train_args.get("train_seconds")
    if own is None:
        own = (train_args.get("average_record") or {}).get("seconds")
    return float(own or 0.0)


def full_command(train_args: dict, out: str) -> str:
    """All steps' `tuneless train` / `tuneless average` commands joined with &&."""
    return " && ".join(stage_command(a, o) for a, o in stages(train_args, out))


def command(obj: dict, out: str) -> str:
    """How to remake the file: its training steps, then, for weights stored in float16
    (models/ has a size budget), the conversion of the float32 result."""
    targs = obj.get("train_args") or {}
    if obj.get("stored_dtype") != "float16":
        return full_command(targs, out)
    wide = out.removesuffix(".pt") + ".fp32.pt"
    return (f"{full_command(targs, wide)} && "
            f"python scripts/halve_checkpoint.py {shlex.quote(wide)} {shlex.quote(out)}")


CHECK_IMAGES = 1000


def subset_accuracy(path: Path, dataset: str) -> float | None:
    """Accuracy on a seeded random 1000-image test subset: a quick reproducibility check."""
    from tuneless.checkpoint import load_checkpoint
    from tuneless.data.loader import get_dataset
    from tuneless.errors import TunelessError
    from tuneless.evaluate import accuracy

    try:
        test = get_dataset(dataset, "test")
    except TunelessError as exc:
        print(f"note: {path.name}: no {dataset} test data, check_accuracy skipped ({exc})")
        return None
    return accuracy(load_checkpoint(path), test.subset(CHECK_IMAGES, seed=0))


def repo_path(path: Path) -> str:
    """The checkpoint's path as written in the repository (models/..., models/smooth/...)."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return f"models/{path.name}"


def entry_for(path: Path, old: dict | None) -> dict:
    obj = read_torch_file(path)
    if not is_checkpoint(obj):
        raise SystemExit(f"{path} is not a tuneless checkpoint")
    targs = obj.get("train_args") or {}
    sha = file_sha256(path)
    params = sum(t.numel() for k, t in obj["state_dict"].items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    steps = stages(targs, repo_path(path))
    train_seconds = sum(stage_seconds(a) for a, _ in steps)
    # the same weights re-saved (e.g. in the reproducible byte layout), or the same training
    # run stored in another dtype (scripts/halve_checkpoint.py), keep date and machine
    same_run = bool(old and obj.get("stored_dtype") and old.get("params") == params
                    and old.get("train_seconds") == train_seconds)
    keep = old if old and (old.get("sha256") == sha or old.get("weights_sha256")
                           == obj.get("weights_sha256") or same_run) else None
    return {
        "file": repo_path(path),
        "arch": obj["arch"],
        "arch_kwargs": obj.get("arch_kwargs", {}),
        "dataset": obj["dataset"],
        "test_accuracy": obj.get("test_accuracy"),
        "check_accuracy": subset_accuracy(path, obj["dataset"]),
        "check_images": CHECK_IMAGES,
        "params": params,
        "epochs": sum(a.get("epochs") or 0 for a, _ in steps),
        "train_seconds": train_seconds,
        "command": command(obj, repo_path(path)),
        "sha256": sha,
        "bytes": path.stat().st_size,
        "weights_sha256": obj.get("weights_sha256"),
        "torch_version": str(obj.get("torch_version")),
        "date": keep["date"] if keep else dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "machine": keep["machine"] if keep else re.sub(r" \(\d+ threads?\)", "", machine()),
        "notes": (old or {}).get("notes", ""),  # hand-written, kept across regenerations
    }


def markdown(entries: list[dict]) -> str:
    rows = [{
        "file": f"`{e['file']}`", "arch": e["arch"], "dataset": e["dataset"],
        "test acc": f"{100 * e['test_accuracy']:.2f}%", "params": e["params"],
        "epochs": e["epochs"], "train time": f"{e['train_seconds'] / 60:.1f} min",
        "MB": f"{e['bytes'] / 2**20:.2f}", "date": e["date"],
    } for e in entries]
    lines = [
        "# Trained checkpoints",
        "",
        "Produced by the project's own `tuneless train` (and, for a weight average of trained",
        "checkpoints, `tuneless average`) on this project's machine; written by",
        "`python scripts/make_manifest.py` (machine-readable copy: `manifest.json`).",
        "Test accuracy is on the full test split (CIFAR-10: the JPEG copy in",
        "`../shared/data/`; Fashion-MNIST: Debian's `dataset-fashion-mnist`).",
        "`tuneless eval FILE` reproduces it. Training times are wall-clock, on one thread",
        "while other training jobs shared the machine's 2 cores unless the notes say otherwise;",
        "a checkpoint trained in stages (`--init`) or averaged from several lists one command",
        "per step, each step once, and their summed time and epochs.",
        "",
        render_markdown(rows),
        "",
        "## Commands, hashes and machines",
        "",
    ]
    for e in entries:
        lines += [
            f"### `{e['file']}`",
            "",
            f"    {e['command']}",
            "",
            f"- sha256 `{e['sha256']}`",
            f"- trained {e['date']} in {e['train_seconds']:.0f} s on {e['machine']}",
            *([f"- {e['notes']}"] if e.get("notes") else []),
            "",
        ]
    return "\n".join(lines)


def check(models: Path, manifest: dict) -> int:
    bad = 0
    for e in manifest["models"]:
        path = ROOT / e["file"]
        if not path.is_file():
            print(f"missing: {e['file']}")
            bad += 1
        elif file_sha256(path) != e["sha256"]:
            print(f"sha256 differs: {e['file']}")
            bad += 1
    listed = {Path(e["file"]).name for e in manifest["models"]}
    for path in sorted(models.glob("*.pt")):
        if not path.name.endswith(".resume.pt") and path.name not in listed:
            print(f"not in the manifest: {repo_path(path)}")
            bad += 1
    print("manifest ok" if not bad else f"{bad} problem(s)")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=str(ROOT / "models"), help="folder of checkpoints")
    p.add_argument("--check", action="store_true", help="verify files against the manifest")
    args = p.parse_args(argv)
    models = Path(args.models)
    json_path = models / "manifest.json"
    old = json.loads(json_path.read_text()) if json_path.exists() else {"models": []}
    if args.check:
        return check(models, old)
    by_file = {e["file"]: e for e in old["models"]}
    entries = [entry_for(p, by_file.get(repo_path(p)))
               for p in sorted(models.glob("*.pt")) if not p.name.endswith(".resume.pt")]
    atomic_write_text(json.dumps({"models": entries}, indent=2) + "\n", json_path)
    atomic_write_text(markdown(entries), models / "MANIFEST.md")
    for e in entries:
        print(f"{e['file']}: {100 * e['test_accuracy']:.2f}%  {e['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
