import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuneless.checkpoint import save_checkpoint
from tuneless.cli import main
from tuneless.zoo import build_model

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def tiny_ckpt(tmp_path):
    path = tmp_path / "mlp.pt"
    save_checkpoint(path, build_model("mlp", width=0.05), "mlp", {"width": 0.05},
                    "fashion-mnist", test_accuracy=0.1)
    return path


def bad_file(tmp_path, tiny_ckpt, kind):
    path = tmp_path / f"bad-{kind}"
    if kind == "truncated":
        data = tiny_ckpt.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "random":
        path.write_bytes(os.urandom(3000))
    elif kind == "text":
        path.write_text("model: resnet20\nweights: none\n")
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["truncated", "random", "text", "directory", "missing"])
def test_eval_bad_model_is_one_line_exit_1(tmp_path, tiny_ckpt, capsys, kind):
    path = bad_file(tmp_path, tiny_ckpt, kind)
    assert main(["eval", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tuneless eval: error: ") and "\n" not in err
    assert str(path) in err


def test_eval_errors_through_a_real_process(tmp_path, tiny_ckpt):
    """The console entry point: exit status 1 and one stderr line, no traceback."""
    env = {**os.environ, "PYTHONPATH": SRC}
    path = bad_file(tmp_path, tiny_ckpt, "truncated")
    proc = subprocess.run([sys.executable, "-m", "tuneless.cli", "eval", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"tuneless eval: error: corrupt model file {path}")


def test_eval_table_and_json(tmp_path, tiny_ckpt, tiny_fashion, capsys):
    out = tmp_path / "r.json"
    rc = main(["eval", str(tiny_ckpt), str(tiny_ckpt), "--data", str(tiny_fashion),
               "--limit", "30", "--json", str(out), "--repeats", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0].split()
    assert header[:4] == ["model", "dataset", "top1", "eval_images"]
    assert "latency_b256_ms" in header and text.count("mlp.pt") == 2
    assert "random subset of 30" in text
    data = json.loads(out.read_text())
    row = data["rows"][0]
    assert row["eval_images"] == 30 and 0 <= row["top1"] <= 1
    assert row["params"] == sum(p.numel() for p in build_model("mlp", width=0.05).parameters())
    assert row["file_bytes"] == tiny_ckpt.stat().st_size and row["latency_b1_ms"] > 0
    assert data["meta"]["threads"] == 1 and data["meta"]["command"].startswith("tuneless eval")


def test_eval_without_data_skips_accuracy(tmp_path, tiny_ckpt, capsys, monkeypatch):
    monkeypatch.setattr("tuneless.data.fashion_mnist.DEFAULT_DIR", tmp_path / "none")
    assert main(["eval", str(tiny_ckpt), "--no-latency"]) == 0
    captured = capsys.readouterr()
    assert "accuracy skipped" in captured.err and "top1" not in captured.out
    assert "flops" in captured.out


@pytest.mark.parametrize("extra, message", [
    (["--limit", "0"], "--limit must be at least 1"),
    (["--data", "/no/such/folder"], "folder not found"),
])
def test_eval_bad_options(tiny_ckpt, capsys, extra, message):
    assert main(["eval", str(tiny_ckpt), *extra]) == 1
    assert message in capsys.readouterr().err


def test_eval_json_never_overwrites_the_model(tiny_ckpt, capsys):
    before = tiny_ckpt.read_bytes()
    assert main(["eval", str(tiny_ckpt), "--json", str(tiny_ckpt)]) == 1
    assert "would overwrite an input model" in capsys.readouterr().err
    assert tiny_ckpt.read_bytes() == before


def test_eval_wrong_dataset_for_model(tiny_ckpt, capsys):
    assert main(["eval", str(tiny_ckpt), "--dataset", "cifar10", "--data", "/no/such"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_eval_wikitext2_task(tiny_ckpt, capsys, monkeypatch):
    seen = {}

    def fake_run_cli(args):  # records what eval hands over to the LLM engineer's module
        seen.update(model=args.model, seq_len=args.seq_len, max_tokens=args.max_tokens,
                    data=args.data)
        return 0

    import importlib

    try:
        mod = importlib.import_module("tuneless.llm.perplexity")
    except ModuleNotFoundError:
        assert main(["eval", str(tiny_ckpt), "--task", "wikitext2"]) == 1
        assert "needs tuneless.llm.perplexity" in capsys.readouterr().err
        return
    monkeypatch.setattr(mod, "run_cli", fake_run_cli)
    assert main(["eval", "m.gguf", "--task", "wikitext2", "--seq-len", "128",
                 "--max-tokens", "512"]) == 0
    assert seen == {"model": "m.gguf", "seq_len": 128, "max_tokens": 512, "data": None}
    assert main(["eval", "a", "b", "--task", "wikitext2"]) == 1


def test_demo_on_a_given_checkpoint(tiny_ckpt, tiny_fashion, capsys):
    rc = main(["demo", "--model", str(tiny_ckpt), "--data", str(tiny_fashion),
               "--methods", "", "--no-latency"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "accuracy on the full test split of 100 test images" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert lines[head].split()[:2] == ["model", "top1"] and lines[head + 2].split()[0] == "dense"
    assert "checkpoint records 0.1000" in out  # it was saved with a made-up accuracy


def test_demo_with_prune(tiny_ckpt, tiny_fashion, capsys):
    pytest.importorskip("tuneless.methods.prune")
    rc = main(["demo", "--model", str(tiny_ckpt), "--data", str(tiny_fashion),
               "--methods", "prune-l1", "--no-latency", "--limit", "50"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("prune-l1 50%"))
    removed = float(row.split()[4].rstrip("%"))
    assert 40 <= removed <= 60


def test_demo_unknown_method(tiny_ckpt, tiny_fashion, capsys):
    assert main(["demo", "--model", str(tiny_ckpt), "--data", str(tiny_fashion),
                 "--methods", "nope", "--no-latency"]) == 1
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_demo_default_falls_back_and_says_so(tmp_path, tiny_ckpt, monkeypatch):
    from tuneless import demo

    models = tmp_path / "models"
    models.mkdir()
    (models / "mlp-fashion-mnist.pt").write_bytes(tiny_ckpt.read_bytes())
    monkeypatch.setattr(demo, "models_dirs", lambda: [models])
    notes = []
    assert demo.find_default_checkpoint(notes.append) == models / "mlp-fashion-mnist.pt"
    assert "resnet20-cifar10.pt is not committed yet" in notes[0]
    (models / "resnet20-cifar10.pt").write_bytes(b"x")
    assert demo.find_default_checkpoint(notes.append).name == "resnet20-cifar10.pt"
    monkeypatch.setattr(demo, "models_dirs", lambda: [tmp_path / "empty"])
    with pytest.raises(Exception, match="no committed checkpoint found"):
        demo.find_default_checkpoint(notes.append)


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out



def test_eval_state_dict_with_arch(tmp_path, tiny_fashion, capsys):
    path = tmp_path / "sd.pt"
    torch.save(build_model("mlp", width=0.05).state_dict(), path)
    assert main(["eval", str(path), "--data", str(tiny_fashion), "--no-latency"]) == 1
    assert "--arch" in capsys.readouterr().err
    assert main(["eval", str(path), "--arch", "mlp", "--arch-kwargs", '{"width": 0.05}',
                 "--data", str(tiny_fashion), "--no-latency"]) == 0
    assert "fashion-mnist" in capsys.readouterr().out


def test_eval_compressed_model(tmp_path, tiny_ckpt, tiny_fashion, capsys):
    pytest.importorskip("tuneless.methods.prune")
    import tuneless

    small = tuneless.prune(tuneless.load_model(tiny_ckpt), sparsity=0.5, criterion="l1",
                           example_inputs=torch.randn(1, 1, 28, 28))
    out = tmp_path / "small.pt"
    tuneless.save(small, out)
    assert main(["eval", str(tiny_ckpt), str(out), "--data", str(tiny_fashion),
                 "--no-latency", "--json", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert rows[1]["dataset"] == "fashion-mnist" and rows[1]["params"] < 0.6 * rows[0]["params"]



def test_guess_dataset():
    import torch.nn as nn

    from tuneless.commands.eval import guess_dataset

    assert guess_dataset(nn.Sequential(nn.Conv2d(3, 4, 3))) == "cifar10"
    assert guess_dataset(nn.Sequential(nn.Flatten(), nn.Linear(784, 10))) == "fashion-mnist"
    assert guess_dataset(nn.Sequential(nn.Linear(5, 2))) is None
    tagged = nn.Linear(5, 2)
    tagged.tuneless_arch = {"ref": "zoo:resnet20", "kwargs": {}}
    assert guess_dataset(tagged) == "cifar10"
    tagged.tuneless_meta = {"dataset": "fashion-mnist"}
    assert guess_dataset(tagged) == "fashion-mnist"


def test_eval_unknown_dataset_asks_for_it(tmp_path, capsys):
    path = tmp_path / "sd.pt"
    torch.save(torch.nn.Linear(5, 2).state_dict(), path)
    assert main(["eval", str(path), "--arch", "torch.nn:Linear",
                 "--arch-kwargs", '{"in_features": 5, "out_features": 2}']) == 1
    assert "pass --dataset" in capsys.readouterr().err


def test_eval_of_an_imagenet_model_needs_no_dataset(tmp_path, capsys):
    """A torchvision model is measured at its own input shape, not forced onto CIFAR-10."""
    import tuneless
    from tuneless.modelio import build_arch

    tuneless.save(build_arch("torchvision:resnet18").eval(), tmp_path / "r18.pt")
    assert main(["eval", str(tmp_path / "r18.pt"), "--no-latency"]) == 0
    out = capsys.readouterr().out
    assert "none (no test data" in out and "3,224,224" in out and "11.7M" in out
    assert main(["eval", str(tmp_path / "r18.pt"), "--no-latency", "--input-shape",
                 "3,128,128"]) == 0
    assert "3,128,128" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "r18.pt"), "--input-shape", "224,224"]) == 1
    assert "C,H,W" in capsys.readouterr().err
