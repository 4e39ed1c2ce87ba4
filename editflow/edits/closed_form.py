"""The closed-form key/value edit shared by UCE and ACE, computed from streamed statistics.

UCE (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024, eq. 6) sets,
for each cross-attention projection ``W_old`` (``to_k`` or ``to_v``),

    W = (λ W_old + s_e Σ_i v_i* c_iᵀ + s_p Σ_j (W_old c_j) c_jᵀ) (λ I + s_e Σ_i c_i c_iᵀ + s_p Σ_j c_j c_jᵀ)⁻¹

with ``v_i* = W_old c_i*`` (``c_i*`` the guide embedding). Because every term is ``W_old`` times
a matrix of embeddings, ``W = W_old M`` with one ``M`` for all layers, and

    ΔW = W - W_old = s_e W_old D A⁻¹,   D = Σ_i (c_i* - c_i) c_iᵀ,   A = λ I + s_e E + s_p P,

where ``E = Σ c_i c_iᵀ`` and ``P = Σ c_j c_jᵀ``. This is ACE's nullification update
``ΔW = W (E* - E) Eᵀ (λI + E Eᵀ + s_p M)⁻¹`` (rank <= number of erase embeddings). So editflow:

* streams ``D``, ``E`` and ``P`` (d x d each, whatever the number of concepts);
* solves once, in float64, through a Cholesky factor of ``A`` (:func:`solve_right`);
* factors ``N = D A⁻¹ = U S Vᵀ`` once, keeping the non-zero rank ``r`` (or, with ``energy < 1``,
  the fewest directions holding that share of ``‖N‖_F²``: ACE's low-rank truncation);
* gives every layer ``ΔW_l = up_l @ down`` with ``up_l = s_e W_l U S`` and a shared ``down = Vᵀ``.

Precision: the text features come in whatever dtype the model runs in (float32, float16,
bfloat16); the statistics, the solve and the SVD are float64, on the device the features are on
when it has float64 (not Apple's MPS: :func:`~editflow.models.device.solve_device` puts those on the CPU), and the
factors come back float32 on the CPU, whatever the model's dtype and device. With a model loaded
in reduced precision, ``W_l`` are its rounded weights: the edit of the model that runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editflow.edits.solve import solve_right
from editflow.models.device import solve_device


@dataclass
class EditStatistics:
    """Sufficient statistics of an erase/preserve set (float64, d x d each)."""

    erase_gram: torch.Tensor  # E = Σ c cᵀ over erase embeddings
    cross: torch.Tensor  # D = Σ (c* - c) cᵀ
    preserve_gram: torch.Tensor  # P = Σ c_p c_pᵀ
    n_erase: int = 0
    n_preserve: int = 0

    @classmethod
    def zeros(cls, dim: int, device: torch.device | str | None = None) -> EditStatistics:
        """Empty statistics on ``device`` (default: the CPU; see :func:`~editflow.models.device.solve_device`)."""
        device = solve_device(device or "cpu")
        z = lambda: torch.zeros(dim, dim, dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(), z(), z())

    @property
    def dim(self) -> int:
        return self.erase_gram.shape[0]

    @property
    def device(self) -> torch.device:
        return self.erase_gram.device

    def add_erase(self, c: torch.Tensor, c_target: torch.Tensor) -> None:
        """Add erase embeddings ``c`` (n, d) with their targets ``c*`` (n, d)."""
        if c.shape != c_target.shape or c.shape[-1] != self.dim:
            raise ValueError(f"erase embeddings {tuple(c.shape)} and targets {tuple(c_target.shape)} "
                             f"must both be (n, {self.dim})")
        c64, t64 = c.to(self.device, torch.float64), c_target.to(self.device, torch.float64)
        self.erase_gram += c64.T @ c64
        self.cross += (t64 - c64).T @ c64
        self.n_erase += len(c)

    def add_preserve(self, c: torch.Tensor) -> None:
        if c.shape[-1] != self.dim:
            raise ValueError(f"preserve embeddings must be (n, {self.dim}), got {tuple(c.shape)}")
        c64 = c.to(self.device, torch.float64)
        self.preserve_gram += c64.T @ c64
        self.n_preserve += len(c)

    def merged(self, other: EditStatistics) -> EditStatistics:
        to = lambda t: t.to(self.device)  # noqa: E731
        return EditStatistics(self.erase_gram + to(other.erase_gram), self.cross + to(other.cross),
                              self.preserve_gram + to(other.preserve_gram),
                              self.n_erase + other.n_erase, self.n_preserve + other.n_preserve)


@dataclass
class LowRankEdit:
    """``ΔW_l = up[l] @ down`` for each target layer ``l``: one ``down`` shared by every layer
    (closed-form edits of the text projections), or one per layer (a LoRA, e.g. ESD-u)."""

    up: dict[str, torch.Tensor]  # (out_l, r) each
    down: torch.Tensor | dict[str, torch.Tensor]  # (r, d) shared, or (r_l, in_l) per layer

    @property
    def shared(self) -> bool:
        return torch.is_tensor(self.down)

    @property
    def rank(self) -> int:
        return self.down.shape[0] if self.shared else max((d.shape[0] for d in self.down.values()), default=0)

    def down_for(self, name: str) -> torch.Tensor:
        return self.down if self.shared else self.down[name]

    def delta(self, name: str) -> torch.Tensor:
        return self.up[name] @ self.down_for(name)


def solve_edit(weights: dict[str, torch.Tensor], stats: EditStatistics, lam: float, erase_scale: float,
               preserve_scale: float, energy: float = 1.0, rank_tol: float = 1e-7) -> LowRankEdit:
    """Closed-form ``ΔW`` for every weight in ``weights`` (name -> (out, d), any dtype and device);
    solved in float64 on the statistics' device, returned as float32 factors on the CPU.

    ``energy`` in (0, 1] keeps the fewest singular directions of ``N`` whose squared singular
    values sum to that share of the total (1 keeps every non-zero one, the exact solution).
    An empty erase set gives rank 0 (every ``ΔW`` is exactly zero).
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    d, device = stats.dim, stats.device
    A = (lam * torch.eye(d, dtype=torch.float64, device=device) + erase_scale * stats.erase_gram
         + preserve_scale * stats.preserve_gram)
    N = solve_right(A, stats.cross)  # D A⁻¹
    U, S, Vh = torch.linalg.svd(N)
    keep = S > rank_tol * max(S[0].item(), 1e-30) if stats.n_erase else torch.zeros_like(S, dtype=torch.bool)
    if energy < 1 and keep.any():
        share = (S**2).cumsum(0) / (S**2).sum()
        keep &= torch.arange(len(S), device=S.device) <= int((share < energy).sum())
    U, S, Vh = U[:, keep], S[keep], Vh[keep]
    left = erase_scale * U * S  # (d, r)
    up = {name: (W.detach().to(device, torch.float64) @ left).float().cpu() for name, W in weights.items()}
    return LowRankEdit(up=up, down=Vh.float().cpu())
