"""`tuneless compress` with repairs that need training images (fold-r) or none (fold-self)."""

import torch

from tuneless.checkpoint import save_checkpoint
from tuneless.cli import main
from tuneless.methods.fold import fold
from tuneless.serialize import load
from tuneless.zoo import build_model


def _checkpoint(tmp_path, augment: bool):
    torch.manual_seed(0)
    model = build_model("mlp", width=0.25).eval()
    path = tmp_path / "mlp.pt"
    save_checkpoint(path, model, "mlp", {"width": 0.25}, "fashion-mnist",
                    train_args={"augment": augment, "pad": 2})
    return model, path


def test_fold_r_needs_repair_data(tmp_path, capsys):
    _, path = _checkpoint(tmp_path, augment=False)
    rc = main(["compress", str(path), "--method", "fold-r", "--sparsity", "0.3",
               "-o", str(tmp_path / "out.pt")])
    assert rc != 0
    assert "--repair-data" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_fold_r_reestimates_on_the_given_training_images(tmp_path, tiny_fashion, capsys):
    model, path = _checkpoint(tmp_path, augment=True)
    out = tmp_path / "small.pt"
    rc = main(["compress", str(path), "--method", "fold-r", "--sparsity", "0.3", "-o", str(out),
               "--repair-data", str(tiny_fashion), "--repair-images", "64",
               "--data", str(tiny_fashion)])
    assert rc == 0, capsys.readouterr().err
    small = load(out)
    bn = [m for m in small.modules() if isinstance(m, torch.nn.BatchNorm1d)][0]
    old = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)][0]
    assert bn.num_features < old.num_features
    # re-estimated from the 64 images: not the (fused, identity) statistics folding leaves
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert "achieved sparsity" in capsys.readouterr().out


def test_fold_match_matches_statistics_on_the_given_images(tmp_path, tiny_fashion, capsys):
    model, path = _checkpoint(tmp_path, augment=False)
    out = tmp_path / "small.pt"
    rc = main(["compress", str(path), "--method", "fold-match", "--sparsity", "0.3", "-o",
               str(out), "--repair-data", str(tiny_fashion), "--repair-images", "64"])
    assert rc == 0, capsys.readouterr().err
    small = load(out)
    assert small.tuneless_report["method"] == "fold-match"
    bn = [m for m in small.modules() if isinstance(m, torch.nn.BatchNorm1d)][0]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_repair_images_must_be_at_least_two(tmp_path, tiny_fashion, capsys):
    _, path = _checkpoint(tmp_path, augment=False)
    rc = main(["compress", str(path), "--method", "fold-r", "--sparsity", "0.3",
               "-o", str(tmp_path / "o.pt"), "--repair-data", str(tiny_fashion),
               "--repair-images", "1"])
    assert rc != 0 and "--repair-images" in capsys.readouterr().err


def test_limit_is_a_random_subset_and_must_be_positive(tmp_path, tiny_fashion, capsys):
    _, path = _checkpoint(tmp_path, augment=False)
    out = tmp_path / "p.pt"
    base = ["compress", str(path), "--method", "prune-l1", "--sparsity", "0.3", "-o", str(out),
            "--data", str(tiny_fashion)]
    assert main([*base, "--limit", "0"]) != 0
    assert "--limit" in capsys.readouterr().err
    assert main([*base, "--limit", "50"]) == 0
    assert "top1" in capsys.readouterr().out


def test_fold_self_needs_no_data_and_refits_on_synthesised_images(tmp_path, capsys):
    model, path = _checkpoint(tmp_path, augment=False)
    out = tmp_path / "self.pt"
    inv = '{"num_images": 8, "batch_size": 8, "steps": 2}'
    rc = main(["compress", str(path), "--method", "fold-self", "--sparsity", "0.3",
               "-o", str(out), "--option", f"inversion={inv}"])
    assert rc == 0, capsys.readouterr().err
    small = load(out)
    x = torch.randn(4, 1, 28, 28)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    same = fold(model, sparsity=0.3, repair="self", example_inputs=torch.randn(2, 1, 28, 28),
                inversion={"num_images": 8, "batch_size": 8, "steps": 2})
    naive = fold(model, sparsity=0.3, repair="none", example_inputs=torch.randn(2, 1, 28, 28))
    small.eval(), same.eval(), naive.eval()
    assert torch.allclose(small(x), same(x), atol=1e-5)  # the API's fold-self, refitted
    assert not torch.allclose(small(x), naive(x), atol=1e-3)


def test_explicit_widths_from_the_command_line(tmp_path, capsys):
    from tuneless.graph import find_groups

    model, path = _checkpoint(tmp_path, augment=False)
    x = torch.randn(2, 1, 28, 28)
    group = find_groups(model, x).reducible[0]
    out = tmp_path / "w.pt"
    rc = main(["compress", str(path), "--method", "fold-ar", "-o", str(out),
               "--option", f'channels={{"{group.id}": 3}}'])
    assert rc == 0, capsys.readouterr().err
    assert load(out).tuneless_report["kept"][str(group.id)] == 3
    rc = main(["compress", str(path), "--method", "fold-ar", "-o", str(tmp_path / "x.pt")])
    assert rc != 0 and "channels" in capsys.readouterr().err


def test_conv_fold_says_its_widths_were_measured_and_uniform_stays_one_option_away(
        tmp_path, capsys):
    model = build_model("resnet20").eval()
    path = tmp_path / "r20.pt"
    save_checkpoint(path, model, "resnet20", {}, "cifar10")
    for extra, measured in (([], True), (["--option", "allocation=uniform"], False)):
        out = tmp_path / f"small{measured}.pt"
        rc = main(["compress", str(path), "--method", "fold-ar", "--sparsity", "0.3", "-o",
                   str(out), "--option", "probe_images=4", *extra])
        assert rc == 0, capsys.readouterr().err
        said = capsys.readouterr().out
        assert ("widths measured per group" in said) is measured
        assert load(out).tuneless_report["allocation"] == ("sensitivity" if measured
                                                           else "uniform")


def test_a_flop_budget_from_the_command_line_and_methods_without_one(tmp_path, capsys):
    from tuneless.evaluate import count_flops

    model = build_model("resnet20").eval()
    path = tmp_path / "r20.pt"
    save_checkpoint(path, model, "resnet20", {}, "cifar10")
    out = tmp_path / "small.pt"
    rc = main(["compress", str(path), "--method", "prune-l1", "--sparsity", "0.5",
               "--budget", "flops", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "of the FLOPs" in capsys.readouterr().out
    x = torch.randn(1, 3, 32, 32)
    assert abs(count_flops(load(out), x) / count_flops(model, x) - 0.5) <= 0.01
    rc = main(["compress", str(path), "--method", "svd", "--sparsity", "0.5", "--budget",
               "flops", "-o", str(tmp_path / "svd.pt")])
    err = capsys.readouterr().err
    assert rc != 0 and "--budget: method svd has no FLOP budget" in err
    assert "Traceback" not in err and not (tmp_path / "svd.pt").exists()
