"""Data-parallel calibration (issue 21): two CPU processes under torchrun (gloo) fold a
tiny Llama with the least-squares repair (on given ids, and data-free on text each rank
samples its half of) and a small CNN with Fold-R and with the layer refit, each rank on
half the calibration data, and get the one-process result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("worker.py")
ROOT = WORKER.parents[2]


def _env() -> dict:
    """A child's environment: this checkout importable, one thread, no inherited world."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
           "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return env


def _why(stderr: str) -> str:
    """What a failed child said: the C++ abort message (gloo, a thread's terminate) comes
    before torchrun's long traceback, so the lines naming it are kept, then the tail."""
    keys = ("terminate", "what()", "Error", "error:", "Abort", "gloo")
    lines = [ln for ln in stderr.splitlines() if any(k in ln for k in keys)]
    return "\n".join(lines[:20]) + "\n...\n" + stderr[-1500:]


def _run(args, out):
    done = subprocess.run([sys.executable, *args, str(WORKER), str(out)], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(out)


def test_two_ranks_equal_one_process(tmp_path):
    one = _run([], tmp_path / "one.pt")
    two = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
               tmp_path / "two.pt")
    assert (one["rows"], two["rows"]) == (8, 4)  # each rank saw half the sequences
    assert (one["refit_images"], two["refit_images"]) == (64, 32)  # and half the images
    # rank 0 sampled only its block of the self-generated text: the one process's first half
    assert one["sampled"].shape == (6, 12) and torch.equal(two["sampled"], one["sampled"][:3])
    for part in ("llm", "fold_r", "refit", "self"):
        for name, value in one[part].items():
            if value.is_floating_point():
                assert (value - two[part][name]).abs().max() <= 1e-5, (part, name)
            else:
                assert torch.equal(value, two[part][name]), (part, name)


def test_compress_under_torchrun_writes_the_one_process_folder(tmp_path):
    from safetensors.torch import load_file

    from tests.commands.test_compress_llm import _tiny_folder

    _tiny_folder(tmp_path / "dense")
    argv = ["-m", "tuneless.cli", "compress", str(tmp_path / "dense"), "--method", "fold",
            "--sparsity", "0.3", "-o"]
    for launch, out in (([], "one"), (["-m", "torch.distributed.run", "--standalone",
                                       "--nproc_per_node", "2"], "two")):
        done = subprocess.run([sys.executable, *launch, *argv, str(tmp_path / out)], env=_env(),
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = (load_file(tmp_path / o / "model.safetensors") for o in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        assert (one[key] - two[key]).abs().max() <= 1e-5, key


def test_streamed_repaired_fold_under_torchrun_equals_one_process(tmp_path):
    from safetensors.torch import load_file

    from tests.llm.conftest import tiny_llama

    tiny_llama(layers=3, mlp=48).save_pretrained(tmp_path / "src", max_shard_size="40KB")
    torch.save(torch.randint(0, 97, (8, 16), generator=torch.Generator().manual_seed(2)),
               tmp_path / "ids.pt")
    argv = ["-m", "tuneless.llm.stream", str(tmp_path / "src"), "--sparsity", "0.25",
            "--repair", "refit", "--calib-ids", str(tmp_path / "ids.pt"), "--schedule", "paper"]
    for launch, out in (([], "one"), (["-m", "torch.distributed.run", "--standalone",
                                       "--nproc_per_node", "2"], "two")):
        done = subprocess.run([sys.executable, *launch, *argv[:3], str(tmp_path / out),
                               *argv[3:]], env=_env(), capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        assert done.returncode == 0 and "error" not in done.stdout, \
            done.stdout + _why(done.stderr)
    assert "rank 1:" in done.stdout and "peak RSS" in done.stdout
    one, two = ({k: v for f in sorted((tmp_path / o).glob("*.safetensors"))
                 for k, v in load_file(f).items()} for o in ("one", "two"))
    assert one.keys() == two.keys()
    for key in one:
        assert (one[key] - two[key]).abs().max() <= 1e-5, key
