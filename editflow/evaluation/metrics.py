"""Metric functions on detections and image features (pure; no generation here)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rate(flags: Sequence[bool]) -> float | None:
    """Share of true flags; ``None`` for no data (a metric that was not measured is not 0)."""
    return sum(map(bool, flags)) / len(flags) if len(flags) else None


def ratio(after: float | None, before: float | None) -> float | None:
    """``after / before``, capped at 1; ``None`` when there is nothing to compare against."""
    if after is None or before is None or before <= 0:
        return None
    return min(after / before, 1.0)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6):

    ``‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 tr (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}``.

    In float64 with symmetric eigendecompositions (no ``sqrtm`` of a non-symmetric product), so
    rank-deficient covariances (fewer images than feature dimensions) stay real and finite.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, d) with the same d, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Fréchet distance needs at least two samples per set")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    ev, vec = torch.linalg.eigh(cov_a)
    root_a = (vec * ev.clamp(min=0).sqrt()) @ vec.T
    middle = root_a @ cov_b @ root_a
    tr_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    d = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_root
    return max(float(d), 0.0)


def paired_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of paired (same prompt, same seed) image features."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def harmonic_score(erasure_rate: float | None, specificity: float | None, leakage: float | None) -> float | None:
    """H_o = harmonic mean of (1 − erasure rate, specificity, 1 − leakage), as MACE reports it
    (Lu et al. 2024, §4.1); ``None`` if any part is missing."""
    parts = [None if erasure_rate is None else 1 - erasure_rate, specificity,
             None if leakage is None else 1 - leakage]
    if any(p is None for p in parts):
        return None
    if any(p <= 0 for p in parts):
        return 0.0
    return len(parts) / sum(1 / p for p in parts)
