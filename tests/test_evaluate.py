import pytest
import torch
import torch.nn as nn

from tuneless.data.loader import TensorDataset
from tuneless.errors import TunelessError
from tuneless.evaluate import (
    accuracy,
    batch_of,
    count_flops,
    count_params,
    evaluate,
    latency_ms,
    size_on_disk,
)


class ConstantClass(nn.Module):
    """Always predicts class `c` (and has one parameter so it is a normal module)."""

    def __init__(self, c: int, classes: int = 10) -> None:
        super().__init__()
        self.c, self.classes = c, classes
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), self.classes) + self.w
        out[:, self.c] = 1
        return out


def data(n=50):
    x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    y = torch.arange(n) % 5  # class 0 is a fifth of the examples
    return TensorDataset("fashion-mnist", x, y, [str(i) for i in range(10)], (0.0,), (1.0,))


def test_accuracy_and_mode_restored():
    m = ConstantClass(0).train()
    assert accuracy(m, data(50), batch_size=7) == pytest.approx(0.2)
    assert m.training
    # limit cuts inside a batch: the first 3 examples have labels 0, 1, 2
    assert accuracy(m, data(50), batch_size=7, limit=3) == pytest.approx(1 / 3)


def test_params_flops_size():
    lin = nn.Linear(10, 4)
    assert count_params(lin) == 44
    with torch.no_grad():
        lin.weight[:2] = 0
    assert count_params(lin, nonzero=True) == 24
    assert count_flops(lin, torch.randn(1, 10)) == 2 * 10 * 4
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, torch.randn(1, 3, 5, 5)) == 2 * 8 * 3 * 9 * 25
    assert 44 * 4 < size_on_disk(lin) < 44 * 4 + 2000


def test_latency_positive_and_mode_restored():
    m = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)).train()
    assert latency_ms(m, torch.randn(1, 8), repeats=3, warmup=1) > 0
    assert m.training


def test_batch_of():
    ex = torch.randn(1, 3, 2, 2)
    b = batch_of(ex, 5)
    assert b.shape == (5, 3, 2, 2) and torch.equal(b[4], ex[0]) and b.is_contiguous()


def test_evaluate_row(tmp_path):
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    path = tmp_path / "m.pt"
    torch.save(m.state_dict(), path)
    row = evaluate(m, data(20), latency_batches=(1, 4), repeats=3, path=path)
    assert set(row) == {"top1", "eval_images", "params", "nonzero_params", "flops",
                        "weights_bytes", "file_bytes", "latency_b1_ms", "latency_b4_ms"}
    assert row["params"] == 170 and row["flops"] == 320 and row["eval_images"] == 20
    assert row["file_bytes"] == path.stat().st_size


def test_evaluate_limit_is_a_random_subset_not_the_first_class():
    d = data(50)
    d.y = torch.arange(50) // 10  # sorted by class, like the test splits on disk
    row = evaluate(ConstantClass(0), d, limit=20, latency_batches=())
    assert row["eval_images"] == 20
    assert row["top1"] < 0.45  # the first 20 (classes 0, 1) would give 0.5; the truth is 0.2


def test_evaluate_without_data_needs_example():
    m = nn.Linear(4, 2)
    with pytest.raises(TunelessError, match="needs test data or an example"):
        evaluate(m)
    row = evaluate(m, example=torch.randn(1, 4), latency_batches=())
    assert "top1" not in row and row["params"] == 10


def test_evaluate_shape_and_class_mismatch():
    with pytest.raises(TunelessError, match="does not accept inputs of shape"):
        evaluate(nn.Linear(3, 10), data(5), latency_batches=())
    with pytest.raises(TunelessError, match="has 4 outputs but fashion-mnist has 10 classes"):
        evaluate(nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), data(5), latency_batches=())


def test_flops_of_a_model_that_returns_a_view_of_a_parameter():
    """torch's FLOP counter hooks module outputs that require grad; a parameter's view
    handed out (Perceiver's trainable position encoding) has no autograd history there."""
    from torch import nn

    class Positions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(4, 3))

        def forward(self):  # a view of it: under no_grad it requires grad, with no history
            return self.table.expand(4, -1)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.positions, self.lin = Positions(), nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x + self.positions())

    model = Model()
    assert count_flops(model, torch.randn(4, 3)) == 2 * 4 * 3 * 2
    assert all(p.requires_grad for p in model.parameters())  # given back as they were
