"""Apply one layer's reduction (producer matrix M, consumer matrix U) to its weight tensors.

Every structured method for LLMs is the same rewrite (DESIGN.md): folding uses
M = D⁻¹Uᵀ (cluster mean) and U = assignment (cluster sum), pruning uses a row
selection M and U = Mᵀ. The rewrite works on plain tensors, so the in-memory
folder and the out-of-core streaming folder share it.

Tensor keys: q k v o gate up down (weights) and "<name>.bias" when present.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Reduction:
    """What happens to one decoder layer; None means that part is untouched.

    mlp_m (k×n), mlp_u (n×k): MLP intermediate channels.
    q_m (kq×nq), q_u (nq×kq): query heads (o_proj column blocks use q_u).
    kv_m (kkv×nkv): key/value heads (producers only; their consumer is attention itself).
    """

    mlp_m: torch.Tensor | None = None
    mlp_u: torch.Tensor | None = None
    q_m: torch.Tensor | None = None
    q_u: torch.Tensor | None = None
    kv_m: torch.Tensor | None = None


def _rows(w: torch.Tensor, m: torch.Tensor, block: int) -> torch.Tensor:
    """Combine blocks of `block` rows: (n·block, …) → (k·block, …) with out = M · blocks."""
    n = m.shape[1]
    rest = w.shape[1:]
    x = w.to(torch.float32).reshape(n, -1)
    return (m.to(torch.float32) @ x).reshape(m.shape[0] * block, *rest).to(w.dtype)


def _cols(w: torch.Tensor, u: torch.Tensor, block: int) -> torch.Tensor:
    """Combine blocks of `block` input columns: (out, n·block) → (out, k·block), blocks · U."""
    out, n = w.shape[0], u.shape[0]
    x = w.to(torch.float32).reshape(out, n, block)
    y = torch.einsum("onb,nk->okb", x, u.to(torch.float32))
    return y.reshape(out, u.shape[1] * block).to(w.dtype)


def apply_reduction(
    t: dict[str, torch.Tensor], red: Reduction, head_dim: int
) -> dict[str, torch.Tensor]:
    """The layer's tensors after the reduction (new tensors; the input dict is not changed)."""
    out = dict(t)
    if red.mlp_m is not None:
        for name in ("gate", "up"):
            out[name] = _rows(t[name], red.mlp_m, 1)
            if f"{name}.bias" in t:
                out[f"{name}.bias"] = _rows(t[f"{name}.bias"], red.mlp_m, 1)
        out["down"] = _cols(t["down"], red.mlp_u, 1)
    if red.q_m is not None:
        out["q"] = _rows(t["q"], red.q_m, head_dim)
        if "q.bias" in t:
            out["q.bias"] = _rows(t["q.bias"], red.q_m, head_dim)
        out["o"] = _cols(t["o"], red.q_u, head_dim)
    if red.kv_m is not None:
        for name in ("k", "v"):
            out[name] = _rows(t[name], red.kv_m, head_dim)
            if f"{name}.bias" in t:
                out[f"{name}.bias"] = _rows(t[f"{name}.bias"], red.kv_m, head_dim)
    return out


def selection(keep: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, U) of structured pruning that keeps the sorted indices `keep` of n units."""
    keep = torch.sort(keep).values
    m = torch.zeros(len(keep), n)
    m[torch.arange(len(keep)), keep] = 1.0
    return m, m.T.clone()


def expand_groups(
    m: torch.Tensor, u: torch.Tensor, group: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lift a kv-head reduction to the query heads: each kv group carries `group` query heads,
    merged position by position (kron with the identity)."""
    return _kron_eye(m, group), _kron_eye(u, group)


def _kron_eye(a: torch.Tensor, g: int) -> torch.Tensor:
    """kron(a, I_g), written out (torch.kron fails on some strided inputs)."""
    eye = torch.eye(g, dtype=a.dtype)
    return (a[:, None, :, None] * eye[None, :, None, :]).reshape(a.shape[0] * g, a.shape[1] * g)
