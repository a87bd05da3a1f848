import pytest
import torch

from tuneless.average import average_checkpoints, mean_state_dict
from tuneless.checkpoint import file_sha256, load_checkpoint
from tuneless.cli import main
from tuneless.errors import TunelessError
from tuneless.train import TrainConfig, train


def trained(data, out, **kw):
    base = dict(arch="mlp", arch_kwargs={"width": 0.05}, data=str(data), epochs=2,
                batch_size=32, lr=0.05, seed=1, pad=2)
    train(TrainConfig(**{**base, **kw}), out, log=lambda s: None)
    return out


@pytest.fixture
def two_stages(tiny_fashion, tmp_path):
    """A first training cycle and a second one warm-started from it (one basin)."""
    a = trained(tiny_fashion, tmp_path / "a.pt")
    b = trained(tiny_fashion, tmp_path / "b.pt", epochs=1, lr=0.02, init=str(a))
    return a, b


def test_mean_state_dict_averages_floats_and_keeps_integer_buffers():
    sds = [{"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(5)},
           {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}]
    out = mean_state_dict(sds)
    torch.testing.assert_close(out["w"], torch.tensor([2.0, 4.0]))
    assert out["n"].item() == 5


def test_average_writes_the_mean_weights_with_fresh_bn_and_its_recipe(two_stages, tiny_fashion,
                                                                      tmp_path):
    a, b = two_stages
    out = tmp_path / "avg.pt"
    meta = average_checkpoints([a, b], out, data=tiny_fashion, batch_size=32, log=lambda s: None)
    sa, sb = load_checkpoint(a).state_dict(), load_checkpoint(b).state_dict()
    avg = load_checkpoint(out)
    saved = avg.state_dict()
    params = [k for k in saved if k.endswith(("weight", "bias"))]
    for k in params:
        torch.testing.assert_close(saved[k], (sa[k] + sb[k]) / 2)
    bn_mean = [k for k in saved if k.endswith("running_mean")]
    # BN statistics are measured for the averaged weights, not averaged
    assert bn_mean and all(not torch.allclose(saved[k], (sa[k] + sb[k]) / 2) for k in bn_mean)
    assert meta["test_accuracy"] > 0.5 and avg.tuneless_meta["arch"] == "mlp"
    record = meta["train_args"]["average_record"]
    assert [i["path"] for i in record["ingredients"]] == [str(a), str(b)]
    assert record["ingredients"][1]["sha256"] == file_sha256(b)
    assert record["ingredients"][1]["train_args"]["init_record"]["path"] == str(a)
    # the augmentation recipe stays readable by the data repairs
    assert meta["train_args"]["augment"] is True and meta["train_args"]["pad"] == 2
    again = average_checkpoints([a, b], tmp_path / "again.pt", data=tiny_fashion, batch_size=32,
                                log=lambda s: None)
    assert again["weights_sha256"] == meta["weights_sha256"]  # seeded BN pass


def test_average_refuses_mismatched_or_bad_inputs(two_stages, tiny_fashion, tmp_path):
    a, b = two_stages
    wider = trained(tiny_fashion, tmp_path / "wide.pt", epochs=1, arch_kwargs={"width": 0.1})
    cases = [
        ([a], tmp_path / "x.pt", "at least two"),
        ([a, a], tmp_path / "x.pt", "listed twice"),
        ([a, wider], tmp_path / "x.pt", "arch_kwargs"),
        ([a, b], b, "one of the inputs"),
        ([a, tmp_path / "missing.pt"], tmp_path / "x.pt", "not found"),
    ]
    junk = tmp_path / "junk.pt"
    torch.save({"a": 1}, junk)
    cases.append(([a, junk], tmp_path / "x.pt", "not a tuneless checkpoint"))
    before = file_sha256(b)
    for paths, out, message in cases:
        with pytest.raises(TunelessError, match=message):
            average_checkpoints(paths, out, data=tiny_fashion, log=lambda s: None)
    assert file_sha256(b) == before and not (tmp_path / "x.pt").exists()


def test_cli_average(two_stages, tiny_fashion, tmp_path, capsys):
    a, b = two_stages
    out = tmp_path / "avg.pt"
    assert main(["average", str(a), str(b), "-o", str(out), "--data", str(tiny_fashion),
                 "--batch-size", "32"]) == 0
    assert "test accuracy" in capsys.readouterr().out and out.exists()
    assert main(["average", str(a), "-o", str(tmp_path / "y.pt")]) == 1
    assert "at least two" in capsys.readouterr().err
