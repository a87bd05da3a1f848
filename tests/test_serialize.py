"""save/load round-trips compressed models to identical outputs; bad files are one-liners."""

import pytest
import torch
import torch.nn as nn

import tuneless
from tuneless.errors import TunelessError
from tuneless.methods.prune import prune
from tuneless.modelio import build_arch
from tuneless.serialize import load, save

X = torch.randn(2, 3, 32, 32)


def pruned_resnet20():
    model = build_arch("resnet20").eval()
    return prune(model, sparsity=0.5, example_inputs=X).eval()


def test_pruned_model_round_trips_without_pickle(tmp_path):
    small = pruned_resnet20()
    info = save(small, tmp_path / "s.pt", meta={"note": "test"})
    assert info["mode"] == "reference" and "layer1.0.conv1" in info["changed_modules"]
    back = load(tmp_path / "s.pt")
    assert torch.equal(back(X), small(X))
    assert back.layer1[0].conv1.out_channels == small.layer1[0].conv1.out_channels
    assert back.tuneless_report["achieved_sparsity"] == small.tuneless_report["achieved_sparsity"]
    # the file is plain data: it loads with weights_only=True
    obj = torch.load(tmp_path / "s.pt", weights_only=True)
    assert obj["arch"]["ref"] == "zoo:resnet20" and obj["meta"] == {"note": "test"}


def test_conv_replaced_by_two_convs_round_trips(tmp_path):
    small = pruned_resnet20()
    c = small.layer2[1].conv1
    small.layer2[1].conv1 = nn.Sequential(
        nn.Conv2d(c.in_channels, 5, 3, 1, 1, bias=False), nn.Conv2d(5, c.out_channels, 1))
    tuneless.save(small, tmp_path / "svd.pt")
    back = tuneless.load(tmp_path / "svd.pt")
    assert isinstance(back.layer2[1].conv1, nn.Sequential)
    assert torch.equal(back(X), small(X))
    # saving the loaded model again works too (the reference travels with it)
    save(back, tmp_path / "again.pt")
    assert torch.equal(load(tmp_path / "again.pt")(X), small(X))


def test_custom_module_with_resized_parameter_round_trips(tmp_path):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.scale = nn.Parameter(torch.rand(8, 1, 1))
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc((self.conv(x) * self.scale).mean((2, 3)))

    import types
    mod = types.ModuleType("tl_test_scaled")
    mod.Scaled = Scaled
    Scaled.__module__ = "tl_test_scaled"
    import sys
    sys.modules["tl_test_scaled"] = mod
    model = build_arch("tl_test_scaled:Scaled", trust_code=True).eval()
    small = prune(model, channel_ratio=0.5, example_inputs=X)
    assert small.scale.shape == (4, 1, 1)
    save(small, tmp_path / "c.pt")
    assert torch.equal(load(tmp_path / "c.pt", trust_code=True)(X), small(X))


class Shortcut(nn.Module):
    """A user's module holding a lambda (as in widely copied CIFAR ResNets): not picklable."""

    def __init__(self, pad):
        super().__init__()
        self.fn = lambda x: nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))

    def forward(self, x):
        return self.fn(x)


class UserNet(nn.Module):
    """A class of the user's own, with no architecture reference."""

    def __init__(self, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.conv = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(2 * width)
        self.short = Shortcut(width // 2)
        self.scale = nn.Parameter(torch.rand(2 * width, 1, 1))
        self.head = nn.Linear(2 * width, 4)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.bn(self.conv(x)) * self.scale + self.short(x))
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("method", ["prune", "fold", "svd"])
def test_user_class_saves_by_structure_and_loads_into_a_fresh_instance(tmp_path, method):
    torch.manual_seed(0)
    model = UserNet().eval()
    if method == "prune":
        small = prune(model, sparsity=0.4, example_inputs=X)
    elif method == "fold":
        small = tuneless.fold(model, sparsity=0.4, example_inputs=X, allocation="uniform")
    else:
        small = tuneless.svd(model, rank_ratio=0.3, example_inputs=X)
    small.eval()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pickle fallback, no warning
        info = save(small, tmp_path / "u.pt")
    assert info == {"mode": "structure", "type": f"{__name__}:UserNet"}
    torch.load(tmp_path / "u.pt", weights_only=True)  # plain data, no code
    with pytest.raises(TunelessError, match=r"model=MyNet\(\.\.\.\)"):
        load(tmp_path / "u.pt")
    back = load(tmp_path / "u.pt", model=UserNet())
    assert torch.equal(back(X), small(X))
    assert not back.training
    if method != "svd":
        assert back.conv.out_channels == small.conv.out_channels < 16
    with pytest.raises(TunelessError, match="not the one .* compressed from: bn.bias is"):
        load(tmp_path / "u.pt", model=UserNet(width=4))


def test_structure_mismatch_is_named_without_recorded_original(tmp_path):
    model = UserNet().eval()  # not compressed: the file records no original shapes
    save(model, tmp_path / "u.pt")
    assert torch.equal(load(tmp_path / "u.pt", model=UserNet())(X), model(X))
    other = UserNet()
    other.short = nn.Identity()
    with pytest.raises(TunelessError, match="short is torch.nn.modules.linear:Identity, the "
                                            "file's is .*Shortcut"):
        load(tmp_path / "u.pt", model=other)
    other = UserNet()
    other.extra = nn.Linear(2, 2)
    with pytest.raises(TunelessError, match=r"the model \(.*UserNet\) has other tensors or "
                                            r"submodules than the file.s \(\+extra\)"):
        load(tmp_path / "u.pt", model=other)


def test_user_class_loads_through_load_model_with_arch(tmp_path):
    from tuneless.modelio import load_model

    small = prune(UserNet().eval(), sparsity=0.4, example_inputs=X).eval()
    save(small, tmp_path / "u.pt")
    back = load_model(tmp_path / "u.pt", arch=f"{__name__}:UserNet")
    assert torch.equal(back(X), small(X))


class Plain(nn.Module):
    """A picklable class of the user's own (no lambda)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class NoSpec(nn.Conv2d):
    """A conv whose constructor needs an argument it does not store: not describable."""

    def __init__(self, cin, cout, tag):
        super().__init__(cin, cout, 3, padding=1)
        self.fn = lambda x: x  # and not picklable either


def test_unpicklable_fallback_is_a_one_line_error(tmp_path):
    small = pruned_resnet20()
    c = small.layer1[0].conv1
    small.layer1[0].conv1 = NoSpec(c.in_channels, c.out_channels, tag="x")
    with pytest.warns(UserWarning, match="pickled"), \
            pytest.raises(TunelessError, match="cannot save this model: module 'layer1.0.conv1'"):
        save(small, tmp_path / "p.pt")
    assert not any(tmp_path.iterdir())  # no file, no temporary left behind


def test_undescribable_module_falls_back_to_pickle(tmp_path):
    small = pruned_resnet20()
    c = small.layer1[0].conv1
    small.layer1[0].conv1 = NoSpec(c.in_channels, c.out_channels, tag="x")
    del small.layer1[0].conv1.fn
    with pytest.warns(UserWarning, match="pickled"):
        info = save(small, tmp_path / "p.pt")
    assert info["mode"] == "pickle"
    with pytest.raises(TunelessError, match="allow_pickle=True"):
        load(tmp_path / "p.pt")
    back = load(tmp_path / "p.pt", allow_pickle=True)
    assert torch.equal(back(X), small(X))


def test_corrupt_and_foreign_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file at all")
    with pytest.raises(TunelessError, match="corrupt"):
        load(bad)
    foreign = tmp_path / "sd.pt"
    torch.save({"w": torch.ones(2)}, foreign)
    with pytest.raises(TunelessError, match="not a model saved by tuneless"):
        load(foreign)
    with pytest.raises(TunelessError, match="not found"):
        load(tmp_path / "missing.pt")
    small = pruned_resnet20()
    save(small, tmp_path / "ok.pt")
    obj = torch.load(tmp_path / "ok.pt", weights_only=True)
    obj["state_dict"]["conv1.weight"] += 1
    torch.save(obj, tmp_path / "tampered.pt")
    with pytest.raises(TunelessError, match="sha256"):
        load(tmp_path / "tampered.pt")


def test_same_model_saved_twice_is_byte_identical(tmp_path):
    """The sha256 of a saved file identifies the model (no temporary names, no timestamps)."""
    small = pruned_resnet20()
    save(small, tmp_path / "a.pt", meta={"k": 1})
    save(small, tmp_path / "b.pt", meta={"k": 1})
    save(load(tmp_path / "a.pt"), tmp_path / "c.pt", meta={"k": 1})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "c.pt").read_bytes()


def test_torch_nn_model_without_reference_loads_from_the_file_alone(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    small = prune(model.eval(), sparsity=0.3, example_inputs=X).eval()
    assert save(small, tmp_path / "s.pt")["mode"] == "structure"
    back = load(tmp_path / "s.pt")  # no model=, no pickle: torch.nn specs all the way
    assert torch.equal(back(X), small(X))


def test_model_read_from_a_pickle_is_saved_as_one(tmp_path):
    """The command line read it with --unsafe-pickle: its output loads the same way."""
    from tuneless.cli import main

    torch.save(Plain().eval(), tmp_path / "whole.pt")
    out = tmp_path / "small.pt"
    with pytest.warns(UserWarning, match="pickled module"):
        assert main(["compress", str(tmp_path / "whole.pt"), "--unsafe-pickle", "--method",
                     "prune-l1", "--sparsity", "0.3", "--input-shape", "3,32,32",
                     "-o", str(out)]) == 0
    assert main(["eval", str(out), "--unsafe-pickle", "--no-latency",
                 "--input-shape", "3,32,32"]) == 0


def test_structure_file_cannot_name_code_to_run(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    save(model, tmp_path / "s.pt")
    obj = torch.load(tmp_path / "s.pt", weights_only=True)
    obj["structure"]["spec"]["children"]["0"]["type"] = "os:system"
    torch.save(obj, tmp_path / "evil.pt")
    with pytest.raises(TunelessError, match="os:system"):
        load(tmp_path / "evil.pt")
    with pytest.raises(TunelessError, match="os:system"):
        load(tmp_path / "evil.pt", model=nn.Sequential(nn.Conv2d(3, 4, 3)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_come_back_in_their_dtype(tmp_path, dtype):
    """load_state_dict casts into the freshly built float32 modules: the saved dtypes must
    be restored, or a float16 model loads as float32 and rejects its own inputs."""
    x = torch.randn(2, 3, 32, 32).to(dtype)
    zoo = prune(build_arch("resnet20").eval().to(dtype), sparsity=0.3, example_inputs=x)
    torch.manual_seed(0)
    user = tuneless.fold(UserNet().eval().to(dtype), sparsity=0.4, example_inputs=X.to(dtype),
                         allocation="uniform")
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval().to(dtype)
    for name, small, given, inp in [("zoo", zoo, None, x), ("user", user, UserNet(), X),
                                    ("plain", plain, None, x)]:
        save(small, tmp_path / f"{name}.pt")
        back = load(tmp_path / f"{name}.pt", model=given)
        assert {t.dtype for t in back.state_dict().values() if t.is_floating_point()} == {dtype}
        assert torch.equal(back(inp.to(dtype)), small(inp.to(dtype)))
