"""`tuneless export MODEL -o OUT.onnx|OUT.pt2`: summary, --no-fuse-bn, one-line mistakes."""

import sys

import pytest
import torch
import torch.nn as nn

import tuneless
from tuneless.cli import main
from tuneless.modelio import build_arch


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A compressed zoo model saved with tuneless.save: ResNet-20 pruned by half."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    model = build_arch("resnet20").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.1, 2.0, generator=g)
    small = tuneless.prune(model, sparsity=0.5, example_inputs=x)
    path = tmp_path_factory.mktemp("export") / "small.pt"
    tuneless.save(small, path)
    return path


def run(argv, capsys) -> tuple[int, str, list[str]]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


def test_onnx_export_prints_the_summary(saved, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "small.onnx"
    code, text, err = run(["export", str(saved), "-o", str(out)], capsys)
    assert code == 0, err
    assert out.stat().st_size > 0
    assert "(ONNX, " in text and "21 BatchNorm layers fused into convs" in text
    assert "at batch 1" in text and "at batch 4" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_pt2_export_with_no_fuse_bn(saved, tmp_path, capsys):
    out = tmp_path / "small.pt2"
    code, text, err = run(["export", str(saved), "-o", str(out), "--no-fuse-bn"], capsys)
    assert code == 0, err
    assert "(torch.export, " in text and "BatchNorm kept (--no-fuse-bn)" in text
    program = torch.export.load(str(out))
    assert any("batch_norm" in str(n.target) for n in program.graph.nodes)
    y = torch.randn(2, 3, 32, 32)
    ref = tuneless.load(saved).eval()
    with torch.no_grad():
        assert torch.allclose(ref(y), program.module()(y), atol=1e-4)


def one_line_error(argv, capsys, expected: str) -> None:
    code, text, err = run(argv, capsys)
    assert code == 1 and len(err) == 1 and "Traceback" not in err[0], err
    assert expected in err[0], err[0]


def test_bad_suffix(saved, tmp_path, capsys):
    one_line_error(["export", str(saved), "-o", str(tmp_path / "small.tflite")], capsys,
                   "must end in .onnx or .pt2")
    assert not list(tmp_path.iterdir())


def test_missing_onnxruntime_names_the_extra(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    one_line_error(["export", str(saved), "-o", str(tmp_path / "small.onnx")], capsys,
                   "pip install 'tuneless[export]'")
    assert not list(tmp_path.iterdir())


def test_output_equal_to_the_input_is_refused(saved, capsys):
    before = saved.read_bytes()
    one_line_error(["export", str(saved), "-o", str(saved)], capsys, "overwrite the input model")
    assert saved.read_bytes() == before


def test_unknown_input_shape_asks_for_input_shape(tmp_path, capsys):
    path = tmp_path / "plain.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten()), path)
    base = ["export", str(path), "--unsafe-pickle", "-o", str(tmp_path / "plain.pt2")]
    one_line_error(base, capsys, "--input-shape C,H,W")
    code, text, err = run([*base, "--input-shape", "3,8,8"], capsys)
    assert code == 0, err
    assert "1 BatchNorm layer fused" in text


def test_fifo_and_read_only_targets_are_refused_before_loading(tmp_path, capsys):
    import os

    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    missing = str(tmp_path / "never-loaded.pt")  # refused before the model is read
    one_line_error(["export", missing, "-o", str(fifo)], capsys, "a FIFO")
    ro = tmp_path / "ro.pt2"
    ro.write_bytes(b"keep")
    ro.chmod(0o444)
    one_line_error(["export", missing, "-o", str(ro)], capsys, "read-only")
    assert ro.read_bytes() == b"keep"


def test_pad_to_reports_the_padded_groups(saved, tmp_path, capsys):
    out = tmp_path / "padded.pt2"
    code, text, err = run(["export", str(saved), "-o", str(out), "--pad-to", "8"], capsys)
    assert code == 0, err
    assert "padded " in text and "channel groups with zero channels" in text
    program = torch.export.load(str(out))
    y = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tuneless.load(saved).eval()(y), program.module()(y), atol=1e-4)
    one_line_error(["export", str(saved), "-o", str(tmp_path / "bad.pt2"), "--pad-to", "0"],
                   capsys, "pad_to must be a positive integer, got 0")


def test_pad_to_auto_prints_what_it_timed_and_kept(saved, tmp_path, capsys):
    out = tmp_path / "auto.pt2"
    code, text, err = run(["export", str(saved), "-o", str(out), "--pad-to", "auto",
                           "--timing-batch", "2"], capsys)
    assert code == 0, err
    line = next(ln for ln in text.splitlines() if ln.startswith("--pad-to auto:"))
    assert "unpadded/8/16 ran in" in line and "ms at batch 2 on this machine; kept" in line
    assert out.exists()
    with pytest.raises(SystemExit) as stop:  # argparse's usage line and one error line
        main(["export", str(saved), "-o", str(tmp_path / "x.pt2"), "--pad-to", "fast"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and "expected a positive integer or auto, got 'fast'" in err[-1]
    assert not (tmp_path / "x.pt2").exists()
