"""A model file never chooses what code runs: import paths inside files need trust_code."""

import os
import sys

import pytest
import torch
import torch.nn as nn

import tuneless
from tuneless import trust
from tuneless.checkpoint import weights_sha256
from tuneless.cli import main
from tuneless.errors import TunelessError
from tuneless.modelio import build_arch, load_model
from tuneless.serialize import load, save
from tuneless.trust import resolve_module_type


def crafted(path, arch_ref="zoo:mlp", modules=None, kwargs=None):
    """A weights-only file in tuneless's format that names code instead of layers."""
    sd = build_arch("mlp").state_dict() if arch_ref == "zoo:mlp" and not modules else {}
    torch.save({"format": "tuneless-model/1", "mode": "reference",
                "arch": {"ref": arch_ref, "kwargs": kwargs or {}}, "modules": modules or {},
                "state_dict": sd, "weights_sha256": weights_sha256(sd), "meta": {},
                "report": None}, path)
    return path


def evil_files(tmp_path):
    marker = tmp_path / "PWNED"
    cmd = {"command": f"touch {marker}"}
    return marker, [
        crafted(tmp_path / "arch.pt", "os:system", kwargs=cmd),
        crafted(tmp_path / "type.pt", modules={"fc1": {"type": "os:system", "args": cmd}}),
        crafted(tmp_path / "func.pt", modules={"fc1": {
            "type": "torchvision.io:write_file",
            "args": {"filename": str(marker), "data": None}}}),
    ]


@pytest.mark.parametrize("command", [["inspect"], ["eval", "--no-latency"],
                                     ["compress", "--method", "fold-ar", "--sparsity", "0.3"]])
def test_cli_refuses_code_named_in_a_file(tmp_path, capsys, command):
    marker, files = evil_files(tmp_path)
    for f in files:
        argv = [command[0], str(f), *command[1:]]
        if command[0] == "compress":
            argv += ["-o", str(tmp_path / "out.pt")]
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refusing to import" in err[0] and "--trust-code" in err[0]
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_api_loaders_refuse_code_named_in_a_file(tmp_path):
    marker, files = evil_files(tmp_path)
    for f in files:
        for loader in (tuneless.load, load_model):
            with pytest.raises(TunelessError, match="refusing to import"):
                loader(f)
    assert not marker.exists()


def test_trust_code_is_the_explicit_opt_in(tmp_path):
    f = crafted(tmp_path / "lin.pt", "collections:OrderedDict")
    with pytest.raises(TunelessError, match="refusing"):
        load(f)
    with pytest.raises(TunelessError, match="did not return an nn.Module"):
        load(f, trust_code=True)  # imported only now, and still checked


def test_working_directory_is_not_put_on_the_import_path(tmp_path, monkeypatch):
    (tmp_path / "tl_cwd_mod.py").write_text("import torch.nn as nn\nNet = nn.Linear\n")
    monkeypatch.chdir(tmp_path)
    cwd_entries = {"", ".", os.getcwd()}
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in cwd_entries])
    with pytest.raises(TunelessError, match="PYTHONPATH"):
        build_arch("tl_cwd_mod:Net", {"in_features": 2, "out_features": 1}, trust_code=True)
    assert os.getcwd() not in sys.path


def test_allowlisted_types_still_round_trip(tmp_path):
    """Real compressed models name torch.nn / tuneless classes only: no flag needed."""
    model = build_arch("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    small = tuneless.svd(tuneless.prune(model, sparsity=0.3, example_inputs=x), sparsity=0.2)
    save(small, tmp_path / "s.pt")
    assert torch.equal(load(tmp_path / "s.pt")(x), small(x))
    assert resolve_module_type("torch.nn.modules.conv:Conv2d", False) is nn.Conv2d


def test_transformers_models_resolve_but_remote_code_does_not():
    """transformers' own model classes are installed code; `transformers_modules` is where
    trust_remote_code puts a repository's code, so it stays refused."""
    pytest.importorskip("transformers")
    ref = "transformers.models.convnext.modeling_convnext:ConvNextLayerNorm"
    assert issubclass(resolve_module_type(ref, False), nn.Module)
    with pytest.raises(TunelessError, match="refusing to import"):
        resolve_module_type("transformers_modules.evil.modeling:Net", False)
    with pytest.raises(TunelessError, match="refusing to import"):
        resolve_module_type("transformers.utils:logging", False)  # not an nn.Module class


class UserNet(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.a = nn.Linear(3, width)
        self.b = nn.Linear(width, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_registered_architecture_loads_without_trust(tmp_path, monkeypatch):
    monkeypatch.setattr(trust, "_ARCHITECTURES", {})
    monkeypatch.setattr(trust, "_MODULES", {})
    model = build_arch(f"{__name__}:UserNet", {"width": 6}, trust_code=True)
    small = tuneless.prune(model, sparsity=0.4, example_inputs=torch.randn(1, 3))
    save(small, tmp_path / "u.pt")
    with pytest.raises(TunelessError, match="refusing to import architecture"):
        load(tmp_path / "u.pt")
    tuneless.register_architecture("usernet", UserNet)  # registers the import path too
    back = load(tmp_path / "u.pt")
    x = torch.randn(4, 3)
    assert torch.equal(back(x), small(x))
    assert isinstance(build_arch("usernet"), UserNet)
    with pytest.raises(TunelessError, match="callable"):
        tuneless.register_architecture("bad", 3)
