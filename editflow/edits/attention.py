"""editflow's cross-attention processor, and context managers that install it and restore the UNet.

One diffusers attention processor (:class:`CrossAttnProcessor`) serves every way editflow
reaches into cross-attention (``attn2``), so the attention arithmetic lives in one place:

* a key/value delta ``K = W_k c + δ_k(c)``, ``V = W_v c + δ_v(c)`` (ACE's gated patch, the
  factors being fine-tuned; :class:`~editflow.edits.gate.LowRankDelta`);
* capture of the attention probabilities ``softmax(q kᵀ / √d)`` for Forget-Me-Not's attention
  re-steering loss (Zhang et al. 2023, §3.2);
* suppression of chosen token positions (their attention set to zero and the rest renormalised):
  FMN's "natural fallback", the image the prompt gives when the concept's tokens are not attended.

Without capture or suppression it calls ``F.scaled_dot_product_attention`` like diffusers'
``AttnProcessor2_0``. Processors are set with ``unet.set_attn_processor`` inside a context
manager (:func:`attention_processors`) that puts the previous ones back on exit, also on error.

In a float16/bfloat16 model the projections run in the model's dtype; a delta comes back in the
hidden states' dtype (:class:`~editflow.edits.gate.LowRankDelta` computes it in float32), and
when probabilities are captured or masked the softmax runs in float32, so the maps a loss reads
are float32 (in float32 models nothing changes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
import torch.nn.functional as F


class KVDelta(Protocol):
    """``δ(c)`` added to the key (``which="k"``) or value (``"v"``) projection of text features ``c``."""

    def __call__(self, c: torch.Tensor, which: str) -> torch.Tensor | float: ...


class CrossAttnProcessor:
    """Cross-attention with an optional K/V delta, probability capture and token suppression.

    ``probe`` receives ``(name, probs)`` with ``probs`` of shape (batch, heads, queries, tokens),
    float32, differentiable; ``suppress`` is a (rows, tokens) bool mask of positions nobody attends to,
    where ``rows`` is the batch or its conditional half (a classifier-free-guided batch is
    ``[uncond, cond]``: the unconditional half is left alone).
    """

    def __init__(self, name: str, delta: KVDelta | None = None,
                 probe: Callable[[str, torch.Tensor], None] | None = None, suppress: torch.Tensor | None = None):
        self.name, self.delta, self.probe, self.suppress = name, delta, probe, suppress

    def _mask(self, batch: int, tokens: int, device) -> torch.Tensor | None:
        if self.suppress is None:
            return None
        m = self.suppress.to(device)
        if m.shape[0] * 2 == batch:
            m = torch.cat([torch.zeros_like(m), m])
        if m.shape != (batch, tokens):
            raise ValueError(f"suppression mask {tuple(self.suppress.shape)} does not fit a batch of "
                             f"{batch} x {tokens} tokens")
        return m[:, None, None, :]

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
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        if self.delta is not None:
            key = key + self.delta(encoder_hidden_states, "k")
            value = value + self.delta(encoder_hidden_states, "v")
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if self.probe is None and self.suppress is None:
            hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=0.0, is_causal=False)
        else:
            scores = (query @ key.transpose(-1, -2)) * attn.scale
            if attention_mask is not None:
                scores = scores + attention_mask
            blocked = self._mask(batch_size, key.shape[-2], scores.device)
            if blocked is not None:
                scores = scores.masked_fill(blocked, float("-inf"))
            probs = scores.float().softmax(-1)
            if self.probe is not None:
                self.probe(self.name, probs)
            hidden_states = probs.to(value.dtype) @ value
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.to(query.dtype)))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def cross_attention_names(unet) -> list[str]:
    """Module names of the UNet's cross-attention layers (those whose keys read the text)."""
    return sorted(name for name, m in unet.named_modules()
                  if getattr(m, "is_cross_attention", False) and hasattr(m, "to_k"))


def install(unet, make: Callable[[str], object | None]) -> dict:
    """Set ``make(attention module name)`` (when not ``None``) as the processor of each
    cross-attention layer; returns the previous processors for :func:`restore`."""
    saved = dict(unet.attn_processors)
    cross = set(cross_attention_names(unet))
    procs = dict(saved)
    for key in saved:
        name = key.rsplit(".processor", 1)[0]
        if name in cross:
            proc = make(name)
            if proc is not None:
                procs[key] = proc
    unet.set_attn_processor(procs)
    return saved


def restore(unet, saved: dict) -> None:
    unet.set_attn_processor(saved)


@contextmanager
def attention_processors(unet, make: Callable[[str], object | None]) -> Iterator[None]:
    """Processors from ``make`` on the cross-attention layers for the ``with`` block only."""
    saved = install(unet, make)
    try:
        yield
    finally:
        restore(unet, saved)


def delta_processors(delta_for: Callable[[str], KVDelta | None]) -> Callable[[str], CrossAttnProcessor | None]:
    """A processor factory for :func:`install` / :func:`attention_processors`: each layer with a
    delta gets one, the others keep theirs."""
    def make(name: str) -> CrossAttnProcessor | None:
        delta = delta_for(name)
        return None if delta is None else CrossAttnProcessor(name, delta)

    return make


@contextmanager
def capture_attention(unet, delta_for: Callable[[str], KVDelta | None] | None = None
                      ) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Record every cross-attention layer's probabilities (differentiable) while the block runs.

    Yields the list the maps are appended to as ``(layer name, probs)``; clear it between
    forward passes. ``delta_for(name)`` optionally adds a K/V delta per layer (a patch in effect).
    """
    maps: list[tuple[str, torch.Tensor]] = []
    probe = lambda name, probs: maps.append((name, probs))  # noqa: E731
    with attention_processors(unet, lambda n: CrossAttnProcessor(n, delta_for(n) if delta_for else None, probe)):
        yield maps


@contextmanager
def suppress_tokens(unet, mask: torch.Tensor) -> Iterator[None]:
    """No cross-attention layer attends to the positions set in ``mask`` (rows, tokens)."""
    with attention_processors(unet, lambda n: CrossAttnProcessor(n, suppress=mask.bool())):
        yield


def token_attention(maps: list[tuple[str, torch.Tensor]], mask: torch.Tensor) -> torch.Tensor:
    """FMN's attention re-steering loss (§3.2): ``Σ_layers ‖A[..., concept tokens]‖²``, the
    squared attention probabilities on the positions in ``mask`` (batch, tokens), averaged over
    batch, heads and queries per layer and summed over layers (float32)."""
    total = 0.0
    for _, probs in maps:
        probs = probs.float()
        m = mask.to(probs.device, probs.dtype)[:, None, None, :]
        total = total + (probs.pow(2) * m).sum(-1).mean()
    return total if torch.is_tensor(total) else torch.zeros(())
