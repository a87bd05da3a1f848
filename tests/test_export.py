"""tuneless.export: conv→BN fusion keeps outputs; .onnx and .pt2 files match PyTorch."""

import copy

import pytest
import torch
import torch.nn as nn

import tuneless
from tuneless.errors import TunelessError
from tuneless.export import conv_bn_pairs, fuse_conv_bn
from tuneless.modelio import build_arch


def with_bn_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random (trained-looking) BN statistics and affine parameters, so fusion is not a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.fixture(scope="module")
def pruned():
    """A compressed zoo model: ResNet-20 pruned to half its parameters, and its input."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    model = with_bn_statistics(build_arch("resnet20"))
    return tuneless.prune(model, sparsity=0.5, example_inputs=x).eval(), x


def test_fusion_removes_every_bn_and_keeps_outputs(pruned):
    model, x = pruned
    before = copy.deepcopy(model.state_dict())
    fused, names, note = fuse_conv_bn(model, x)
    assert note is None and len(names) == bns(model) == 21
    assert bns(fused) == 0
    y = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, got = model(y), fused(y)
    assert (ref - got).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())
    after = model.state_dict()  # the input model is untouched
    assert all(torch.equal(before[k], after[k]) for k in before) and bns(model) == 21


def test_onnx_file_matches_pytorch(pruned, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model, x = pruned
    path = tmp_path / "small.onnx"
    report = tuneless.export(model, path, example_inputs=x)
    assert report["format"] == "onnx" and report["bytes"] == path.stat().st_size
    assert len(report["bns_fused"]) == 21
    assert set(report["max_abs_diff"]) == {1, 4}
    assert all(report["max_abs_diff"][b] <= report["limit"][b] for b in (1, 4))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    y = torch.randn(3, 3, 32, 32)  # a batch size the export never saw
    (got,) = session.run(None, {session.get_inputs()[0].name: y.numpy()})
    with torch.no_grad():
        ref = model(y)
    assert (ref - torch.from_numpy(got)).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_pt2_file_matches_pytorch_and_has_no_batchnorm(pruned, tmp_path):
    model, x = pruned
    path = tmp_path / "small.pt2"
    report = tuneless.export(model, path, example_inputs=x)
    assert report["format"] == "pt2" and len(report["bns_fused"]) == 21
    program = torch.export.load(str(path))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("batch_norm" in op for op in ops), ops
    y = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref, got = model(y), program.module()(y)
    assert (ref - got).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


class Shared(nn.Module):
    """conv1's output feeds bn1 and a skip; conv2 is called twice; conv3→bn3 is a clean pair."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv3, self.bn3 = nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4)

    def forward(self, x):
        a = self.conv1(x)
        b = self.bn1(a) + a
        c = self.bn2(self.conv2(self.conv2(b)))
        return self.bn3(self.conv3(c)).mean((2, 3))


def test_only_convs_read_by_their_bn_alone_are_fused():
    model = with_bn_statistics(Shared())
    x = torch.randn(2, 3, 8, 8)
    assert conv_bn_pairs(model, x) == [("conv3", "bn3")]
    fused, names, _ = fuse_conv_bn(model, x)
    assert names == ["bn3"] and isinstance(fused.bn3, nn.Identity)
    assert isinstance(fused.bn1, nn.BatchNorm2d) and isinstance(fused.bn2, nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.allclose(model(x), fused(x), atol=1e-5)


def test_a_pair_that_changes_the_outputs_is_left_unfused(monkeypatch):
    import torch.nn.utils.fusion as fusion

    model = with_bn_statistics(nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.Flatten()))
    real = fusion.fuse_conv_bn_eval

    def broken_for_the_second(conv, bn, transpose=False):
        out = real(conv, bn, transpose)
        if conv.in_channels == 4:
            out.bias.data += 1.0
        return out

    monkeypatch.setattr(fusion, "fuse_conv_bn_eval", broken_for_the_second)
    fused, names, note = fuse_conv_bn(model, torch.randn(1, 3, 8, 8))
    assert names == ["1"] and "1 conv+BatchNorm pair(s) left unfused" in note
    assert isinstance(fused[1], nn.Identity) and isinstance(fused[4], nn.BatchNorm2d)


def test_no_fuse_bn_keeps_batchnorm_and_a_training_model_is_left_training(tmp_path):
    model = build_arch("lenet5")
    model.features.insert(1, nn.BatchNorm2d(6))
    model = with_bn_statistics(model).train()
    report = tuneless.export(model, tmp_path / "m.pt2", fuse_bn=False)  # shape from the arch
    assert report["bns_fused"] == [] and model.training
    program = torch.export.load(str(tmp_path / "m.pt2"))
    assert any("batch_norm" in str(n.target) for n in program.graph.nodes)


def test_bad_suffix_and_unknown_shape_are_errors(tmp_path):
    with pytest.raises(TunelessError, match=r"must end in \.onnx or \.pt2"):
        tuneless.export(nn.Linear(2, 2), tmp_path / "m.tflite", torch.randn(1, 2))
    with pytest.raises(TunelessError, match="input shape of this model is unknown"):
        tuneless.export(nn.Linear(2, 2), tmp_path / "m.pt2")
    assert not list(tmp_path.iterdir())


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(TunelessError, match=r"pip install 'tuneless\[export\]'"):
        tuneless.export(nn.Linear(2, 2), tmp_path / "m.onnx", torch.randn(1, 2))


@pytest.fixture()
def odd_widths():
    """A small conv net with widths that pad differently to 8 and to 16 (11 and 20)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 11, 3, padding=1), nn.BatchNorm2d(11), nn.ReLU(),
                        nn.Conv2d(11, 20, 3, padding=1), nn.BatchNorm2d(20), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, 5))
    return with_bn_statistics(net), torch.randn(1, 3, 16, 16)


def _timed_by_multiple(monkeypatch, ms: dict[int, float]) -> None:
    """Make each padding candidate's runner report the time given for its multiple."""
    import sys

    module = sys.modules["tuneless.export"]
    build = module._build

    def tagged(reference, x, fmt, fuse_bn, pad_to, n_out, graph=None):
        out = build(reference, x, fmt, fuse_bn, pad_to, n_out, graph=graph)
        run = out["runner"]
        out["runner"] = lambda xb, run=run: run(xb)
        out["runner"].multiple = pad_to or 1
        return out

    monkeypatch.setattr(module, "_build", tagged)
    monkeypatch.setattr(module, "seconds_per_call", lambda runner, xb: ms[runner.multiple] / 1e3)


@pytest.mark.parametrize("ms, chosen", [({1: 3.0, 8: 1.0, 16: 2.0}, 8),
                                        ({1: 2.0, 8: 3.0, 16: 1.0}, 16),
                                        ({1: 1.0, 8: 1.0, 16: 1.0}, 1)])  # ties: the smaller
def test_pad_to_auto_keeps_the_fastest_candidate(odd_widths, tmp_path, monkeypatch, ms, chosen):
    model, x = odd_widths
    _timed_by_multiple(monkeypatch, ms)
    report = tuneless.export(model, tmp_path / "m.pt2", x, pad_to="auto")
    assert report["pad_to"] == chosen and report["pad_timings"] == ms
    widths = sorted(n for n, _ in report["padded"].values())
    assert widths == ([] if chosen == 1 else [11, 20])
    assert all(p % chosen == 0 for _, p in report["padded"].values())
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    convs = [n for n in program.state_dict() if n.endswith("weight")]
    assert program.state_dict()[convs[0]].shape[0] == -(-11 // chosen) * chosen


def test_pad_to_auto_times_for_real_and_skips_candidates_that_pad_alike(odd_widths, tmp_path):
    model, x = odd_widths
    report = tuneless.export(model, tmp_path / "m.pt2", x, pad_to="auto")
    assert set(report["pad_timings"]) == {1, 8, 16} and report["pad_to"] in {1, 8, 16}
    assert all(t > 0 for t in report["pad_timings"].values())
    wide = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3))  # already padded
    report = tuneless.export(wide, tmp_path / "w.pt2", x, pad_to="auto")
    assert report["pad_to"] == 1 and report["pad_timings"] == {} and report["padded"] == {}
    narrow = nn.Sequential(nn.Conv2d(3, 24, 3), nn.ReLU(), nn.Conv2d(24, 8, 3))
    report = tuneless.export(narrow, tmp_path / "n.pt2", x, pad_to="auto")
    assert set(report["pad_timings"]) == {1, 16}  # 24 is already a multiple of 8


@pytest.mark.parametrize("bad", ["fast", 0, -8])
def test_bad_pad_to_is_one_line(odd_widths, tmp_path, bad):
    model, x = odd_widths
    with pytest.raises(TunelessError, match=r"pad_to must be a positive integer"):
        tuneless.export(model, tmp_path / "m.pt2", x, pad_to=bad)
    with pytest.raises(TunelessError, match="timing_batch must be a positive integer"):
        tuneless.export(model, tmp_path / "m.pt2", x, pad_to="auto", timing_batch=0)
    assert not list(tmp_path.iterdir())
