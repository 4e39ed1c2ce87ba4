"""ACE's gate: apply a key/value edit only to text features that lie in the concept subspace.

The gated projection is ``K(c) = W c + g(c) ΔW c`` with

    g(c) = sigmoid((ρ(c) - τ) / T),   ρ(c) = log mean_i (v_iᵀ c)²,

where the ``v_i`` are the directions in which erase embeddings carry more energy than preserve
embeddings: the top generalized eigenvectors of ``E v = μ (P + δI) v`` with ``μ > 1`` (``E``, ``P``
the erase / preserve second-moment matrices), scaled so ``v_iᵀ (P + δI) v_i = 1``. ``ρ`` is thus
measured in units of the preserve set's own spread (about 0 for preserved-like features, ``log μ``
for concept features): independent of the encoder's feature scale. ``τ`` and ``T`` are calibrated so that erase
embeddings score above and preserve embeddings below the threshold (best Youden's J). Unrelated tokens therefore
pass through unchanged, while the edit stays low-rank.

The gated delta (:class:`LowRankDelta`) runs inside editflow's cross-attention processor
(:mod:`editflow.edits.attention`), set per layer and restored afterwards. It is computed in float32
on the text features' device (gate included) and cast back to their dtype, so a model in float16
or bfloat16 adds a delta of its own dtype while the (possibly trainable) factors stay float32.
The gate is calibrated in float64 on the statistics' device; its basis is stored float32 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editflow.edits.closed_form import EditStatistics


@dataclass
class Gate:
    basis: torch.Tensor  # (d, g), preserve-whitened directions
    tau: float
    temperature: float

    def score(self, c: torch.Tensor) -> torch.Tensor:
        """ρ(c) (log scale) for features ``c`` (..., d), in ``c``'s dtype on its device."""
        b = self.basis.to(c.device, c.dtype)
        return torch.log((c @ b).pow(2).mean(-1) + 1e-12)

    def __call__(self, c: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((self.score(c) - self.tau) / self.temperature)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"basis": self.basis}

    def params(self) -> dict:
        return {"tau": self.tau, "temperature": self.temperature}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], params: dict) -> Gate:
        return cls(tensors["basis"], float(params["tau"]), float(params["temperature"]))


def calibrate_gate(stats: EditStatistics, erase: torch.Tensor, preserve: torch.Tensor, max_rank: int = 64,
                   ridge: float = 1e-3) -> Gate:
    """Fit the gate's subspace from the statistics and its threshold from sample embeddings.

    ``erase`` / ``preserve`` are samples (n, d) of the embeddings behind the statistics.
    """
    d = stats.dim
    P = stats.preserve_gram / max(stats.n_preserve, 1)
    E = stats.erase_gram / max(stats.n_erase, 1)
    reg = P + ridge * (torch.trace(P) / d + 1e-12) * torch.eye(d, dtype=torch.float64, device=P.device)
    L = torch.linalg.cholesky(reg)
    Linv_E = torch.linalg.solve_triangular(L, E, upper=False)
    M = torch.linalg.solve_triangular(L, Linv_E.T, upper=False)  # L⁻¹ E L⁻ᵀ (symmetric)
    mu, w = torch.linalg.eigh((M + M.T) / 2)
    order = torch.argsort(mu, descending=True)[:max_rank]
    order = order[mu[order] > 1.0]
    if len(order) == 0:
        order = torch.argsort(mu, descending=True)[:1]
    V = torch.linalg.solve_triangular(L.T, w[:, order], upper=True)  # L⁻ᵀ w: Vᵀ (P + δI) V = I
    gate = Gate(V.float().cpu(), 0.0, 1.0)
    gate.tau, gate.temperature = _threshold(gate.score(erase.float()).cpu(), gate.score(preserve.float()).cpu())
    return gate


def _threshold(r_erase: torch.Tensor, r_keep: torch.Tensor) -> tuple[float, float]:
    """τ maximising Youden's J = P(ρ_erase > τ) - P(ρ_keep > τ); T a tenth of the score spread."""
    if len(r_keep) == 0:  # no preserve set: open from the bottom of the erase scores
        return torch.quantile(r_erase, 0.05).item() - 0.5, 0.25
    cands = torch.cat([r_erase, r_keep]).unique()
    mids = (cands[1:] + cands[:-1]) / 2 if len(cands) > 1 else cands
    tpr = (r_erase[None, :] > mids[:, None]).float().mean(1)
    fpr = (r_keep[None, :] > mids[:, None]).float().mean(1)
    tau = mids[torch.argmax(tpr - fpr)].item()
    spread = (r_erase.median() - r_keep.median()).abs().item()
    return tau, max(spread / 10, 0.05)


def layer_delta(attn_name: str, up: dict, down, gate: Gate | None = None) -> LowRankDelta | None:
    """The delta of cross-attention layer ``attn_name`` from per-projection ``up`` factors (keyed by
    ``<layer>.to_k`` / ``<layer>.to_v``); ``None`` when the edit does not touch the layer."""
    k, v = up.get(f"{attn_name}.to_k"), up.get(f"{attn_name}.to_v")
    return None if k is None and v is None else LowRankDelta(down, k, v, gate)


class LowRankDelta:
    """``δ(c) = g(c) · (c downᵀ) upᵀ`` for one layer's key and value (``g = 1`` without a gate).

    The factors may be trainable parameters (fine-tuning keeps the gate fixed and learns them);
    they are float32, on any device (moved to the features' device, differentiably, when elsewhere).
    """

    def __init__(self, down: torch.Tensor, up_k: torch.Tensor | None, up_v: torch.Tensor | None,
                 gate: Gate | None = None):
        self.down, self.up, self.gate = down, {"k": up_k, "v": up_v}, gate

    def __call__(self, c: torch.Tensor, which: str) -> torch.Tensor | float:
        up = self.up[which]
        if up is None:
            return 0.0
        cf = c.float()
        delta = (cf @ self.down.T.to(c.device, torch.float32)) @ up.T.to(c.device, torch.float32)
        if self.gate is not None:
            delta = self.gate(cf).unsqueeze(-1) * delta
        return delta.to(c.dtype)
