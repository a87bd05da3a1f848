import pytest
import torch
import torch.nn as nn

from tuneless.checkpoint import (
    FORMAT,
    file_sha256,
    load_checkpoint,
    read_torch_file,
    save_checkpoint,
    weights_sha256,
)
from tuneless.errors import TunelessError
from tuneless.zoo import build_model


@pytest.fixture
def ckpt(tmp_path):
    model = build_model("mlp", width=0.05).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, "mlp", {"width": 0.05}, "fashion-mnist",
                    train_args={"epochs": 1}, test_accuracy=0.5)
    return path, model


def test_round_trip(ckpt):
    path, model = ckpt
    loaded = load_checkpoint(path)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training
    meta = loaded.tuneless_meta
    assert meta["format"] == FORMAT and meta["arch"] == "mlp"
    assert meta["arch_kwargs"] == {"width": 0.05} and meta["dataset"] == "fashion-mnist"
    assert meta["test_accuracy"] == 0.5 and meta["train_args"] == {"epochs": 1}
    assert meta["weights_sha256"] == weights_sha256(model.state_dict())
    assert isinstance(meta["torch_version"], str) and "state_dict" not in meta
    # plain torch can read it without unsafe unpickling
    assert torch.load(path, weights_only=True)["arch"] == "mlp"


def test_weights_hash_ignores_order_but_not_values():
    sd = {"a": torch.ones(2), "b": torch.zeros(3)}
    assert weights_sha256(sd) == weights_sha256({"b": torch.zeros(3), "a": torch.ones(2)})
    assert weights_sha256(sd) != weights_sha256({"a": torch.ones(2), "b": torch.ones(3)})
    assert weights_sha256(sd) != weights_sha256({"a": torch.ones(2, 1), "b": torch.zeros(3)})


def test_file_sha256(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert file_sha256(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_tampered_weights_detected(ckpt):
    path, _ = ckpt
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["net.1.weight"][0, 0] += 1
    torch.save(obj, path)
    with pytest.raises(TunelessError, match="do not match their recorded sha256"):
        load_checkpoint(path)
    assert load_checkpoint(path, verify=False) is not None


def test_wrong_architecture_detected(ckpt):
    path, _ = ckpt
    obj = torch.load(path, weights_only=True)
    obj["arch_kwargs"] = {"width": 0.1}
    torch.save(obj, path)
    with pytest.raises(TunelessError, match="does not fit architecture mlp"):
        load_checkpoint(path)


def test_missing_fields(tmp_path):
    torch.save({"format": FORMAT, "arch": "mlp"}, tmp_path / "x.pt")
    with pytest.raises(TunelessError, match="no 'arch' name or no 'state_dict'"):
        load_checkpoint(tmp_path / "x.pt")


def _truncated(tmp_path, ckpt_path):
    data = ckpt_path.read_bytes()
    p = tmp_path / "trunc.pt"
    p.write_bytes(data[: len(data) // 2])
    return p


@pytest.mark.parametrize("kind, message", [
    ("missing", "not found"),
    ("directory", "is a directory"),
    ("empty", "the file is empty"),
    ("text", "not a PyTorch file"),
    ("random", "not a PyTorch file"),
    ("truncated", "corrupt checkpoint"),
    ("pickle-garbage", "corrupt checkpoint"),
    ("tensor", "not a tuneless checkpoint"),
    ("module", "pickled Python objects"),
])
def test_bad_files(tmp_path, ckpt, kind, message):
    path = tmp_path / kind
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, this is not a model\n")
    elif kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes()
                         .replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    elif kind == "pickle-garbage":
        path.write_bytes(b"\x80\x02" + bytes(range(7, 250)) * 3)
    elif kind == "truncated":
        path = _truncated(tmp_path, ckpt[0])
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "module":
        torch.save(nn.Linear(2, 2), path)
    with pytest.raises(TunelessError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_old_checkpoints_with_torch_version_object_still_load(tmp_path, ckpt):
    path, _ = ckpt
    obj = torch.load(path, weights_only=True)
    obj["torch_version"] = torch.__version__  # a TorchVersion, as files before the fix held
    torch.save(obj, path)
    assert read_torch_file(path)["arch"] == "mlp"


def test_convert_checkpoint_to_float16_halves_the_weights_and_loads_as_float32(ckpt, tmp_path):
    from tuneless.checkpoint import convert_checkpoint

    path, model = ckpt
    dst = tmp_path / "half.pt"
    measured = []
    meta = convert_checkpoint(path, dst, measure=lambda m: measured.append(m) or 0.49)
    assert meta["stored_dtype"] == "float16" and meta["test_accuracy"] == 0.49
    assert all(p.dtype == torch.float32 for p in measured[0].parameters())  # the halved model
    raw = torch.load(dst, weights_only=True)
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values()
               if v.is_floating_point())
    loaded = load_checkpoint(dst)  # hash verified on the float16 weights
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-2, rtol=1e-2)
        assert not torch.equal(loaded(x), model(x))  # really rounded
    assert dst.stat().st_size < 0.6 * path.stat().st_size
    with pytest.raises(TunelessError, match="already exists"):
        convert_checkpoint(path, dst)
    big = build_model("mlp", width=0.05).eval()
    with torch.no_grad():
        next(big.parameters()).fill_(1e6)
    save_checkpoint(tmp_path / "big.pt", big, "mlp", {"width": 0.05}, "fashion-mnist")
    with pytest.raises(TunelessError, match="overflow"):
        convert_checkpoint(tmp_path / "big.pt", tmp_path / "big16.pt")
    assert not (tmp_path / "big16.pt").exists()
