"""Every user mistake is one line on stderr and exit 1; docs/reliability.md is this table.

The cases run through the real CLI entry point. The table they produce is compared with
docs/reliability.md, so the doc cannot drift from the code: after changing a message, run
`TUNELESS_UPDATE_DOCS=1 python -m pytest tests/commands/test_bad_input.py` to rewrite it.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import torch

import tuneless
from tuneless.cli import main
from tuneless.modelio import build_arch

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def _saved(path: Path, poison: str | None = None) -> str:
    model = build_arch("lenet5").eval()
    if poison:
        with torch.no_grad():
            model.get_parameter("features.3.weight")[0, 0, 0, 0] = float(poison)
    tuneless.save(model, path)
    return str(path)


def _crafted(path: Path, arch_ref: str, modules: dict | None = None) -> str:
    from tuneless.checkpoint import weights_sha256

    torch.save({"format": "tuneless-model/1", "mode": "reference",
                "arch": {"ref": arch_ref, "kwargs": {} if modules else {"command": "touch PWNED"}},
                "modules": modules or {}, "state_dict": {}, "weights_sha256": weights_sha256({}),
                "meta": {}, "report": None}, path)
    return str(path)


def _gguf(path: Path) -> str:
    path.write_bytes(b"GGUF" + bytes(60))  # the magic and a header's worth of zeros
    return str(path)


def _safetensors(path: Path) -> str:
    header = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    return str(path)


def _hf_folder(path: Path) -> str:
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama"}')
    return str(path)


def cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(case, argv, a substring the one-line error must contain)."""
    ok = _saved(tmp / "lenet.pt")
    out = str(tmp / "out.pt")
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    dev = tmp / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (tmp / "devlink").symlink_to(dev)
    ro = tmp / "readonly.pt"
    ro.write_bytes(b"keep")
    ro.chmod(0o444)
    (tmp / "afile").write_text("x")
    fold = ["compress", ok, "--method", "fold-naive", "--sparsity", "0.5"]
    return [
        ("architecture `os:system` named in a file",
         ["inspect", _crafted(tmp / "evil.pt", "os:system")], "refusing to import architecture"),
        ("module type `os:system` named in a file",
         ["eval", _crafted(tmp / "evil2.pt", "zoo:lenet5", {"features.0": {
             "type": "os:system", "args": {"command": "touch PWNED"}}}), "--no-latency"],
         "refusing to import module type"),
        ("`-o` is a character device", [*fold, "-o", str(dev)], "character device"),
        ("`-o` is a FIFO", [*fold, "-o", str(fifo)], "a FIFO"),
        ("`-o` is a symlink to a device", [*fold, "-o", str(tmp / "devlink")],
         "character device"),
        ("`-o` is a directory", [*fold, "-o", str(tmp)], "a directory"),
        ("`-o` is a read-only file", [*fold, "-o", str(ro)], "read-only"),
        ("`-o` under a regular file", [*fold, "-o", str(tmp / "afile" / "x.pt")],
         "not a directory"),
        ("`-o` where nothing can be written", [*fold, "-o", "/proc/tuneless/x.pt"],
         "cannot write"),
        ("`eval --json` is a character device", ["eval", ok, "--json", str(dev)],
         "character device"),
        ("`--option seed=abc`", [*fold, "-o", out, "--option", "seed=abc"],
         "must be an integer"),
        ("`--option seed=1.5`", [*fold, "-o", out, "--option", "seed=1.5"],
         "must be an integer"),
        ("`--option batch_size=0` with fold-r",
         ["compress", ok, "--method", "fold-r", "--sparsity", "0.5", "-o", out,
          "--option", "batch_size=0"], "batch_size must be at least 1"),
        ("`--option round_to=abc` with prune-l1",
         ["compress", ok, "--method", "prune-l1", "--sparsity", "0.5", "-o", out,
          "--option", "round_to=abc"], "round_to must be an integer"),
        ("`--option n_init=many`", [*fold, "-o", out, "--option", "n_init=many"],
         "n_init must be an integer or 'auto'"),
        ("`--threads 0`", [*fold, "-o", out, "--threads", "0"], "--threads must be at least 1"),
        ("`min_channels=1000` with `--channel-ratio 0.5` removes nothing",
         ["compress", ok, "--method", "prune-l1", "--channel-ratio", "0.5", "-o", out,
          "--option", "min_channels=1000"], "removed nothing"),
        ("NaN weights with fold-naive",
         [*fold[:1], _saved(tmp / "nan.pt", "nan"), *fold[2:], "-o", out], "NaN values in"),
        ("NaN weights with svd",
         ["compress", str(tmp / "nan.pt"), "--method", "svd", "--sparsity", "0.5", "-o", out],
         "NaN values in"),
        ("Inf weights with prune-l1",
         ["compress", _saved(tmp / "inf.pt", "inf"), "--method", "prune-l1", "--sparsity",
          "0.5", "-o", out], "Inf values in"),
        ("NaN weights with magnitude",
         ["compress", str(tmp / "nan.pt"), "--method", "magnitude", "--sparsity", "0.5",
          "-o", out], "NaN values in"),
        ("missing model file", ["eval", str(tmp / "missing.pt")], "not found"),
        ("a file that is not a model", ["eval", str(tmp / "afile")], "corrupt"),
        ("a `.safetensors` weights file without its folder's config.json",
         ["eval", _safetensors(tmp / "model.safetensors")], "weights without their architecture"),
        ("a CNN-only method on a Hugging Face folder",
         ["compress", _hf_folder(tmp / "hf"), "--method", "fold-ar", "--sparsity", "0.2",
          "-o", out], "does not apply to language models"),
        ("a CNN-only method on a GGUF file",
         ["compress", _gguf(tmp / "m.gguf"), "--method", "prune-l1", "--sparsity", "0.2",
          "-o", out], "does not apply to language models"),
        ("unknown method", ["compress", ok, "--method", "fold-xyz", "--sparsity", "0.5", "-o",
                            out], "unknown method"),
        ("`export` to an unknown format", ["export", ok, "-o", str(tmp / "m.tflite")],
         ".onnx"),
        ("`export` without onnxruntime", ["export", ok, "-o", str(tmp / "m.onnx")],
         "pip install 'tuneless[export]'"),
        ("missing optional dependency (transformers)",
         ["eval", "--task", "wikitext2", str(tmp)], "pip install 'tuneless[llm]'"),
    ]


def run_case(argv: list[str], capsys, monkeypatch) -> tuple[int, list[str]]:
    for name in ("transformers", "onnxruntime"):  # as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    code = main(argv)
    captured = capsys.readouterr()
    return code, [ln for ln in captured.err.splitlines() if ln.strip()]


def test_each_mistake_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the character-device cases need mknod (root)")
    rows = []
    for case, argv, expected in cases(tmp_path):
        with monkeypatch.context() as mp:
            code, err = run_case(argv, capsys, mp)
        assert code == 1, (case, code, err)
        assert len(err) == 1 and "Traceback" not in err[0], (case, err)
        assert expected in err[0], (case, err[0])
        rows.append((case, argv, code, err[0]))
    assert not (tmp_path / "out.pt").exists() and not Path("PWNED").exists()
    assert stat.S_ISCHR(os.stat(tmp_path / "null").st_mode)
    text = render(rows, str(tmp_path))
    if os.environ.get("TUNELESS_UPDATE_DOCS") == "1":
        DOC.write_text(text)
    assert DOC.read_text() == text, (
        "docs/reliability.md is out of date: rerun with TUNELESS_UPDATE_DOCS=1")


def render(rows, tmp: str) -> str:
    def clean(s: str) -> str:
        return s.replace(tmp, "TMP").replace("|", "\\|")

    lines = [
        "# Bad input: what tuneless says",
        "",
        "Every row is a mistake a user can make, run through the real command-line entry point",
        "by `tests/commands/test_bad_input.py`, which also checks that this file equals what the",
        "cases print today (regenerate: `TUNELESS_UPDATE_DOCS=1 python -m pytest "
        "tests/commands/test_bad_input.py`).",
        "Each gives exactly one line on stderr and exit code 1, with no traceback (add",
        "`--traceback` to see one), and writes nothing. `TMP` is the test's temporary folder;",
        "the character device is made with `mknod` (1, 3), like `/dev/null`, and is untouched.",
        "",
        "| case | command | exit | stderr |",
        "|---|---|---|---|",
    ]
    for case, argv, code, first in rows:
        cmd = clean("tuneless " + " ".join(argv))
        lines.append(f"| {case} | `{cmd}` | {code} | {clean(first)} |")
    return "\n".join(lines) + "\n"
