"""Checked linear solves in float64: never ``inverse``, and refuse a bad system loudly.

Every closed-form edit here solves ``X A = B`` for a symmetric positive definite ``A`` (a
regularised Gram matrix of text embeddings). One Cholesky factorisation of ``A`` serves the
right-hand sides of all target layers at once.
"""

from __future__ import annotations

import torch

from editflow.errors import EditflowError

MAX_CONDITION = 1e12


class SolveError(EditflowError):
    """The system is not finite or too ill-conditioned to trust its solution."""


def solve_right(A: torch.Tensor, B: torch.Tensor, max_condition: float = MAX_CONDITION) -> torch.Tensor:
    """``X = B A^{-1}`` for symmetric positive definite ``A`` (d x d) and ``B`` (..., n, d).

    Computed in float64 as ``solve(A, B^T)^T`` through a Cholesky factor; returns float64.
    Raises :class:`SolveError` on NaN/Inf, a non-positive-definite ``A``, or a condition number
    above ``max_condition``.
    """
    A64, B64 = A.to(torch.float64), B.to(torch.float64)
    if not torch.isfinite(A64).all() or not torch.isfinite(B64).all():
        raise SolveError("the edit's system has NaN or Inf entries (check the text embeddings)")
    A64 = (A64 + A64.T) / 2
    eig = torch.linalg.eigvalsh(A64)
    if eig[0] <= 0:
        raise SolveError(f"the edit's system is not positive definite (smallest eigenvalue {eig[0].item():.3g}); "
                         "increase the regulariser lambda")
    cond = (eig[-1] / eig[0]).item()
    if cond > max_condition:
        raise SolveError(f"the edit's system is ill-conditioned (condition number {cond:.3g} > {max_condition:.0g}); "
                         "increase the regulariser lambda")
    L = torch.linalg.cholesky(A64)
    X = torch.cholesky_solve(B64.transpose(-1, -2), L).transpose(-1, -2)
    if not torch.isfinite(X).all():
        raise SolveError("the edit's solution is not finite")
    return X
