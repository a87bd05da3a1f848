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


def check_token_ids(model, data, what: str = "data") -> torch.Tensor:
    """`data` as a (batch, seq_len) tensor of token ids the model can embed; else one line
    naming the problem (floats, a wrong rank, ids outside the vocabulary) instead of an
    error from inside the embedding."""
    try:
        ids = torch.as_tensor(data)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TunelessError(f"{what} must be token ids (a tensor of integers), got "
                            f"{type(data).__name__}") from exc
    if ids.dtype in (torch.bool, torch.uint8) or ids.is_floating_point() or ids.is_complex():
        raise TunelessError(f"{what} must be integer token ids, got dtype {ids.dtype}")
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.numel() == 0:
        raise TunelessError(f"{what} must be token ids of shape (batch, seq_len), got "
                            f"{tuple(ids.shape)}")
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    vocab = getattr(embeddings, "num_embeddings", None)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        raise TunelessError(f"{what} holds token ids {low}..{high}, outside the model's "
                            f"vocabulary 0..{vocab - 1 if vocab else '?'} (another tokenizer?)")
    return ids.long()


def token_batches(model, batches, tokenizer, n_samples: int, seq_len: int, seed: int,
                  method: str) -> list[torch.Tensor]:
    """The calibration batches of a data-driven baseline (Wanda-sp, FLAP): `batches` checked
    as token ids the model can embed, else n_samples windows of the calibration text drawn
    with `tokenizer`."""
    if batches is not None:
        return [check_token_ids(model, b, "batches") for b in batches]
    if tokenizer is None:
        raise TunelessError(f"{method} needs calibration data: pass tokenizer= or batches=")
    return calibration_batches(tokenizer, n_samples, seq_len, seed)
