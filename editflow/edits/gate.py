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

The gate runs inside a diffusers attention processor (:class:`GatedCrossAttnProcessor`), set per
cross-attention layer with ``unet.set_attn_processor`` and restored afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from editflow.edits.closed_form import EditStatistics, LowRankEdit


@dataclass
class Gate:
    basis: torch.Tensor  # (d, g), preserve-whitened directions
    tau: float
    temperature: float

    def score(self, c: torch.Tensor) -> torch.Tensor:
        """ρ(c) (log scale) for features ``c`` (..., d)."""
        b = self.basis.to(c.dtype)
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
    reg = P + ridge * (torch.trace(P) / d + 1e-12) * torch.eye(d, dtype=torch.float64)
    L = torch.linalg.cholesky(reg)
    Linv_E = torch.linalg.solve_triangular(L, E, upper=False)
    M = torch.linalg.solve_triangular(L, Linv_E.T, upper=False)  # L⁻¹ E L⁻ᵀ (symmetric)
    mu, w = torch.linalg.eigh((M + M.T) / 2)
    order = torch.argsort(mu, descending=True)[:max_rank]
    order = order[mu[order] > 1.0]
    if len(order) == 0:
        order = torch.argsort(mu, descending=True)[:1]
    V = torch.linalg.solve_triangular(L.T, w[:, order], upper=True)  # L⁻ᵀ w: Vᵀ (P + δI) V = I
    gate = Gate(V.float(), 0.0, 1.0)
    gate.tau, gate.temperature = _threshold(gate.score(erase.float()), gate.score(preserve.float()))
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


class GatedCrossAttnProcessor:
    """``AttnProcessor2_0`` with gated low-rank deltas on ``to_k`` / ``to_v``."""

    def __init__(self, gate: Gate, edit: LowRankEdit, key_name: str, value_name: str):
        self.gate = gate
        self.down = edit.down
        self.up_k = edit.up.get(key_name)
        self.up_v = edit.up.get(value_name)

    def _delta(self, c: torch.Tensor, up: torch.Tensor | None) -> torch.Tensor | float:
        if up is None:
            return 0.0
        g = self.gate(c.float()).unsqueeze(-1)
        return (g * (c.float() @ self.down.T.to(c.device)) @ up.T.to(c.device)).to(c.dtype)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states) + self._delta(encoder_hidden_states, self.up_k)
        value = attn.to_v(encoder_hidden_states) + self._delta(encoder_hidden_states, self.up_v)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                       dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
