from dataclasses import asdict

import pytest
import torch

from tuneless.checkpoint import file_sha256, load_checkpoint
from tuneless.errors import TunelessError
from tuneless.train import TrainConfig, lr_at, same_config, train


def config(data, **kw):
    base = dict(arch="mlp", arch_kwargs={"width": 0.05}, data=str(data), epochs=3,
                batch_size=32, lr=0.05, seed=1, pad=2)
    return TrainConfig(**{**base, **kw})


def interrupt_at_step(n: int):
    """An extra-loss hook that stops training with KeyboardInterrupt at its n-th step."""
    steps = {"n": 0}

    def hook(model):
        steps["n"] += 1
        if steps["n"] == n:
            raise KeyboardInterrupt
        return torch.zeros(())

    return hook


def test_train_learns_and_writes_a_checkpoint(tiny_fashion, tmp_path):
    calls = []

    def extra(model):
        calls.append(1)
        return sum(p.sum() for p in model.parameters()) * 0.0

    out = tmp_path / "m.pt"
    meta = train(config(tiny_fashion), out, extra_loss=extra, log=lambda s: None)
    assert len(calls) == 3 * (200 // 32)  # the hook runs once per step
    assert meta["dataset"] == "fashion-mnist" and meta["arch"] == "mlp"
    assert meta["test_accuracy"] > 0.5  # chance is 0.1
    history = meta["train_args"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert meta["train_args"]["train_seconds"] > 0 and meta["train_args"]["pad"] == 2
    model = load_checkpoint(out)
    assert model.tuneless_meta["test_accuracy"] == meta["test_accuracy"]
    assert out.with_suffix(".resume.pt").exists()


def test_resume_after_interruption_matches_uninterrupted(tiny_fashion, tmp_path):
    cfg = config(tiny_fashion, arch="lenet5", arch_kwargs={}, epochs=3)
    full = train(cfg, tmp_path / "full.pt", log=lambda s: None)

    part = tmp_path / "part.pt"
    with pytest.raises(KeyboardInterrupt):  # 6 steps per epoch: stop half-way through epoch 2
        train(cfg, part, extra_loss=interrupt_at_step(6 + 3), log=lambda s: None)
    assert not part.exists() and part.with_suffix(".resume.pt").exists()
    with pytest.raises(TunelessError, match="different configuration"):
        train(config(tiny_fashion, arch="lenet5", arch_kwargs={}, lr=0.1), part,
              log=lambda s: None)
    logs = []
    resumed = train(cfg, part, log=logs.append)
    assert any("resuming" in s and "epoch 1/3" in s for s in logs)
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert resumed["test_accuracy"] == full["test_accuracy"]


def test_eval_every_skips_test_passes_without_changing_the_weights(tiny_fashion, tmp_path):
    every = train(config(tiny_fashion), tmp_path / "a.pt", log=lambda s: None)
    rarely = train(config(tiny_fashion, eval_every=2), tmp_path / "b.pt", log=lambda s: None)
    assert [h["test_acc"] is None for h in rarely["train_args"]["history"]] == [True, False,
                                                                                 False]
    assert rarely["weights_sha256"] == every["weights_sha256"]
    assert rarely["test_accuracy"] == every["test_accuracy"]
    assert same_config(asdict(config(tiny_fashion)), config(tiny_fashion, eval_every=5))


def test_same_config_accepts_options_added_later_at_default():
    cfg = TrainConfig(arch="resnet20", epochs=18, threads=1)
    old = asdict(cfg)
    del old["pad"]
    assert same_config(old, cfg)
    assert not same_config(old, TrainConfig(arch="resnet20", epochs=18, threads=1, pad=2))
    assert not same_config({**asdict(cfg), "unknown": 1}, cfg)


def test_same_config_ignores_data_path_and_threads():
    cfg = TrainConfig(arch="resnet20", epochs=18, threads=1)
    moved = {**asdict(cfg), "data": "/elsewhere/cifar10.tar.gz", "threads": 2}
    assert same_config(moved, cfg)
    assert not same_config({**moved, "dataset": "fashion-mnist"}, cfg)


def test_schedules():
    one = TrainConfig(lr=1.0, schedule="onecycle")
    assert lr_at(one, 0, 100) == pytest.approx(0.1)
    assert lr_at(one, 15, 100) == pytest.approx(1.0)
    assert lr_at(one, 100, 100) == pytest.approx(0.0, abs=1e-9)
    cos = TrainConfig(lr=1.0, schedule="cosine")
    assert lr_at(cos, 0, 100) == 1.0 and lr_at(cos, 50, 100) == pytest.approx(0.5)


def test_swa_schedule_anneals_to_the_swa_lr_then_holds_it():
    cfg = TrainConfig(lr=1.0, schedule="cosine", epochs=4, swa_epochs=1, swa_lr=0.1)
    assert lr_at(cfg, 0, 100) == 1.0
    assert lr_at(cfg, 75, 200) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through 150 steps
    assert lr_at(cfg, 74, 100) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(cfg, s, 100) == 0.1 for s in range(75, 101))
    one = TrainConfig(lr=1.0, schedule="onecycle", epochs=4, swa_epochs=2, swa_lr=0.2)
    assert lr_at(one, 0, 100) == pytest.approx(0.1) and lr_at(one, 49, 100) > 0.2
    assert lr_at(one, 50, 100) == 0.2


def test_swa_saves_the_average_of_the_last_epochs_with_fresh_bn(tiny_fashion, tmp_path):
    cfg = config(tiny_fashion, swa_epochs=2, swa_lr=0.01)
    seen = {"n": 0}

    def snapshot_after_epoch_2(model):  # 6 steps per epoch: step 13 starts epoch 3
        seen["n"] += 1
        if seen["n"] == 13:
            seen["after2"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return torch.zeros(())

    out = tmp_path / "swa.pt"
    meta = train(cfg, out, extra_loss=snapshot_after_epoch_2, log=lambda s: None)
    last = torch.load(out.with_suffix(".resume.pt"), weights_only=False)["model"]
    saved = load_checkpoint(out).state_dict()
    params = [k for k in saved if k.endswith(("weight", "bias"))]
    for k in params:
        torch.testing.assert_close(saved[k], (seen["after2"][k] + last[k]) / 2)
    assert any(not torch.equal(saved[k], last[k]) for k in params)
    bn_mean = [k for k in saved if k.endswith("running_mean")]
    assert bn_mean and all(not torch.equal(saved[k], last[k]) for k in bn_mean)
    record = meta["train_args"]["swa_record"]
    assert record["averaged_epochs"] == 2 and record["test_acc"] == meta["test_accuracy"]
    assert record["last_iterate_test_acc"] == meta["train_args"]["history"][-1]["test_acc"]


def test_swa_resumes_to_the_same_weights(tiny_fashion, tmp_path):
    cfg = config(tiny_fashion, swa_epochs=2, swa_lr=0.01)
    full = train(cfg, tmp_path / "full.pt", log=lambda s: None)
    part = tmp_path / "part.pt"
    with pytest.raises(KeyboardInterrupt):  # half-way through epoch 3, after one average
        train(cfg, part, extra_loss=interrupt_at_step(12 + 3), log=lambda s: None)
    resumed = train(cfg, part, log=lambda s: None)
    assert resumed["weights_sha256"] == full["weights_sha256"]


@pytest.mark.parametrize("kw, message", [
    ({"epochs": 0}, "epochs"), ({"lr": 0}, "lr"), ({"schedule": "step"}, "schedule"),
    ({"label_smoothing": 1.0}, "label_smoothing"), ({"pad": -1}, "pad"),
    ({"eval_every": 0}, "eval_every"), ({"swa_epochs": 3}, "swa_epochs"),
    ({"swa_epochs": 1, "swa_lr": 0.05}, "swa_lr"),
])
def test_bad_config(tiny_fashion, tmp_path, kw, message):
    with pytest.raises(TunelessError, match=message):
        train(config(tiny_fashion, **kw), tmp_path / "x.pt", log=lambda s: None)


def test_unknown_dataset_for_arch(tmp_path):
    with pytest.raises(TunelessError, match="unknown architecture"):
        train(TrainConfig(arch="nope"), tmp_path / "x.pt", log=lambda s: None)


def test_init_warm_starts_from_a_trained_checkpoint(tiny_fashion, tmp_path):
    """--init: a second cycle starts from the first one's weights and records its recipe."""
    first = tmp_path / "first.pt"
    stage1 = train(config(tiny_fashion, epochs=2), first, log=lambda s: None)
    seen = {}

    def capture_first_step(model):
        if "w" not in seen:
            seen["w"] = {k: v.detach().clone() for k, v in model.named_parameters()}
        return torch.zeros(())

    second = tmp_path / "second.pt"
    meta = train(config(tiny_fashion, epochs=1, lr=0.01, schedule="cosine", init=str(first)),
                 second, extra_loss=capture_first_step, log=lambda s: None)
    start = dict(load_checkpoint(first).named_parameters())  # (BN buffers move in the forward)
    assert all(torch.equal(seen["w"][k], start[k]) for k in start)  # began at stage 1's weights
    record = meta["train_args"]["init_record"]
    assert record["path"] == str(first) and record["sha256"] == file_sha256(first)
    assert record["train_args"]["epochs"] == 2
    from tuneless.train import total_train_seconds

    assert total_train_seconds(meta["train_args"]) == pytest.approx(
        meta["train_args"]["train_seconds"] + stage1["train_args"]["train_seconds"])
    # a cold start from the same seed lands elsewhere
    cold = train(config(tiny_fashion, epochs=1, lr=0.01, schedule="cosine"), tmp_path / "c.pt",
                 log=lambda s: None)
    assert cold["weights_sha256"] != meta["weights_sha256"]


@pytest.mark.parametrize("kw, message", [
    ({"arch": "lenet5", "arch_kwargs": {}}, "holds mlp"),
    ({"arch_kwargs": {"width": 0.1}}, "holds mlp"),
])
def test_init_must_match_the_architecture(tiny_fashion, tmp_path, kw, message):
    first = tmp_path / "first.pt"
    train(config(tiny_fashion, epochs=1), first, log=lambda s: None)
    with pytest.raises(TunelessError, match=message):
        train(config(tiny_fashion, epochs=1, init=str(first), **kw), tmp_path / "x.pt",
              log=lambda s: None)


def test_init_refuses_to_overwrite_its_input_and_bad_files(tiny_fashion, tmp_path):
    first = tmp_path / "first.pt"
    train(config(tiny_fashion, epochs=1), first, log=lambda s: None)
    with pytest.raises(TunelessError, match="same file"):
        train(config(tiny_fashion, init=str(first)), first, log=lambda s: None)
    with pytest.raises(TunelessError, match="not found"):
        train(config(tiny_fashion, init=str(tmp_path / "nope.pt")), tmp_path / "y.pt",
              log=lambda s: None)
    junk = tmp_path / "junk.pt"
    torch.save({"a": 1}, junk)
    with pytest.raises(TunelessError, match="not a tuneless checkpoint"):
        train(config(tiny_fashion, init=str(junk)), tmp_path / "z.pt", log=lambda s: None)
