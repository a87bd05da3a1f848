"""The one least-squares solver of the repairs (CNN layer refit, LLM consumer refit)."""

from __future__ import annotations

import torch


def ridge_solve(gram: torch.Tensor, cross: torch.Tensor, ridge: float,
                prior: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_X ||A X − Y||² + λ·mean(diag AᵀA)·||X − X₀||² from gram = AᵀA, cross = AᵀY.

    The ridge is relative to the data's scale, so one λ serves every layer; X₀ (`prior`,
    default 0) is what the solution is pulled towards. Solved in float64 by Cholesky, by
    least squares if the system is numerically singular.
    """
    gram, cross = gram.double(), cross.double()
    reg = ridge * float(gram.diagonal().mean().clamp(min=1e-12))
    lhs = gram + reg * torch.eye(gram.shape[0], dtype=gram.dtype)
    rhs = cross if prior is None else cross + reg * prior.double()
    factor, info = torch.linalg.cholesky_ex(lhs)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.lstsq(lhs, rhs).solution
