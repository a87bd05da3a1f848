"""Spectral diagnostics: energy ranks on known spectra, tables, and the plot file."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tuneless import TunelessError
from tuneless.spectral import (
    energy_rank,
    plot_spectra,
    singular_values,
    spectral_markdown,
    spectral_rows,
)

torch.set_num_threads(1)


def _model_with_spectrum(sigmas: list[float]) -> nn.Sequential:
    """A 6×6 linear with the given singular values, then a 6×3 conv-free classifier."""
    n = 6
    q1, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(0)))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(1)))
    s = torch.tensor(sigmas + [0.0] * (n - len(sigmas)))
    lin = nn.Linear(n, n)
    with torch.no_grad():
        lin.weight.copy_(q1 @ torch.diag(s) @ q2.T)
    return nn.Sequential(lin, nn.ReLU(), nn.Linear(n, 3))


def test_energy_rank_on_hand_spectra():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert energy_rank(s, 0.6) == 1  # 9/14 = 0.64
    assert energy_rank(s, 0.9) == 2  # 13/14 = 0.93
    assert energy_rank(s, 0.95) == 3
    assert energy_rank(s, 1.0) == 3
    assert energy_rank(torch.ones(10), 0.95) == 10
    with pytest.raises(TunelessError, match="energy level"):
        energy_rank(s, 1.5)


def test_singular_values_normalised_and_rows():
    model = _model_with_spectrum([4.0, 2.0, 1.0])
    s = singular_values(model)["0"]
    assert torch.allclose(s[:3], torch.tensor([1.0, 0.5, 0.25], dtype=s.dtype), atol=1e-6)
    assert s[3:].abs().max() < 1e-6
    raw = singular_values(model, normalise=False)["0"]
    assert raw[0].item() == pytest.approx(4.0, rel=1e-6)
    row = spectral_rows(model)[0]  # energies 16, 4, 1 of 21: 76%, 95.2%, 100%
    assert (row["r90"], row["r95"], row["r99"]) == (2, 2, 3)
    assert row["full_rank"] == 6 and row["break_even"] == 3.0 and row["shape"] == "6×6"


def test_markdown_compares_models_and_counts_break_even():
    low = _model_with_spectrum([4.0, 2.0, 1.0])
    flat = _model_with_spectrum([1.0] * 6)
    text = spectral_markdown({"low": low, "flat": flat})
    assert "| low " in text and "| flat " in text
    assert "2/2/3" in text and "6/6/6" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("| low")]
    assert lines, text


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "spectra.png"
    names = plot_spectra({"a": _model_with_spectrum([3.0, 1.0]),
                          "b": _model_with_spectrum([1.0] * 6)}, out)
    assert names == ["0", "2"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_model_without_layers():
    with pytest.raises(TunelessError, match="no conv or linear"):
        singular_values(nn.Sequential(nn.ReLU()))
