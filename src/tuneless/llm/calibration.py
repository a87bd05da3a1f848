"""Calibration text for the data-driven baseline (Wanda-sp), from a source other than the test set.

We use the Python Language Reference topics shipped with CPython itself
(`pydoc_data.topics`, ~465k characters of English technical prose with code):
it is on every machine that runs tuneless, needs no download, is licensed under
the PSF licence, and shares no text with WikiText-2. It is a weaker calibration
set than C4 (used by the Wanda paper), which makes the comparison conservative
for Wanda-sp — the docs say so.
"""

from __future__ import annotations

import torch

from tuneless.errors import TunelessError


def calibration_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def calibration_batches(tokenizer, n_samples: int = 16, seq_len: int = 512,
                        seed: int = 0) -> list[torch.Tensor]:
    """n_samples random windows of seq_len tokens (seeded) from the calibration text."""
    ids = tokenizer(calibration_text(), return_tensors="pt", add_special_tokens=False)
    ids = ids["input_ids"][0]
    if ids.numel() <= seq_len:
        raise TunelessError(f"calibration text has only {ids.numel()} tokens (< seq_len {seq_len})")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=gen)
    return [ids[s:s + seq_len][None] for s in starts.tolist()]
