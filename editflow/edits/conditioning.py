"""Text features at chosen token positions: the vectors ``c`` closed-form edits act on.

Features come from the pipeline's own ``encode_prompt`` (so SD 1.x/2.x give their CLIP states and
SDXL its two encoders concatenated to 2048-d), i.e. exactly what the UNet's ``to_k``/``to_v`` read.

Token policy (UCE, Gandikota et al. WACV 2024): which positions of a prompt stand for the
concept. ``last`` takes the concept's last token (the current reference code); ``through_pad``
takes every position from the concept's first token to the end of the padded sequence (the 2023
reference): a causal encoder carries the concept into all later positions.

The encoders run on the model's execution device; the features come back as float32 on the
device where the edit's float64 statistics are kept (:func:`feature_device`: the model's, or the CPU
for one without float64, MPS). A closed form reads them through :func:`float32_encoders`: encoders
loaded in float16/bfloat16 compute in float32 while it encodes (docs/patches.md: on SD 1.5 in
bfloat16, features from the bfloat16 encoder moved ACE's update 24 % from the float32 one, from
the float32-computing encoder 1.5 %).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

import torch

from editflow.models.device import solve_device
from editflow.models.diffusion import execution_device


class TokenPolicy(str, Enum):
    last = "last"
    through_pad = "through_pad"


def feature_device(pipe) -> torch.device:
    """Where encoded features (and the statistics built from them) are kept: the model's execution
    device when it has float64, else the CPU."""
    return solve_device(execution_device(pipe))


def encode(pipe, prompts: list[str], batch: int = 64) -> torch.Tensor:
    """``(N, L, d)`` text features of ``prompts`` as the UNet receives them, computed in the text
    encoder's dtype, returned as float32 on :func:`feature_device`."""
    device, keep = execution_device(pipe), feature_device(pipe)
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            emb = pipe.encode_prompt(prompt=prompts[i:i + batch], device=device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)[0]
            out.append(emb.to(keep, torch.float32))
    return torch.cat(out)


def encoder_pairs(pipe) -> list[tuple[object, torch.nn.Module]]:
    """``(tokenizer, text_encoder)`` pairs whose features the UNet reads, in concatenation order."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return [(t, e) for t, e in pairs if e is not None]


@contextmanager
def float32_encoders(pipe) -> Iterator[None]:
    """Inside the block the pipeline's float16/bfloat16 text encoders compute in float32: their weights
    are cast up (exactly: every reduced-precision value is a float32 one) and cast back on exit, bit
    for bit. For the duration each such encoder takes twice its memory (SD 1.5: +0.25 GB; SDXL's two:
    +1.6 GB); float32 encoders are left alone."""
    low = [te for _, te in encoder_pairs(pipe) if te.dtype in (torch.float16, torch.bfloat16)]
    dtypes = [te.dtype for te in low]
    for te in low:
        te.float()
    try:
        yield
    finally:
        for te, dtype in zip(low, dtypes):
            te.to(dtype)


def is_clip_family(pipe) -> bool:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return all(isinstance(te, (CLIPTextModel, CLIPTextModelWithProjection)) for _, te in encoder_pairs(pipe))


def token_count(pipe, prompts: list[str]) -> int:
    """Longest tokenized length (with ``<bos>``/``<eos>``) of ``prompts`` over the pipeline's tokenizers."""
    return max(len(_ids(tok, p, True)) for tok, _ in encoder_pairs(pipe) for p in prompts)


def encode_features(pipe, prompts: list[str], length: int | None = None, mask_words: list[str] | None = None,
                    batch: int = 64) -> torch.Tensor:
    """Text features computed from the encoders directly, as the pipelines' ``encode_prompt`` does:
    the last hidden state for SD 1.x/2.x, the penultimate hidden state of both encoders,
    concatenated, for SDXL.

    ``length`` pads to fewer than ``model_max_length`` tokens: CLIP text encoders are causal, so
    the features at positions < ``length`` are exactly those of the fully padded prompt (a 77-token
    model encodes a 6-token concept ~10x faster). ``mask_words`` masks each prompt's word out of
    the encoders' attention, so later tokens cannot read it. Float32 on :func:`feature_device`.
    """
    pairs = encoder_pairs(pipe)
    device, keep = execution_device(pipe), feature_device(pipe)
    if not is_clip_family(pipe):
        raise ValueError("direct feature encoding supports CLIP text encoders; use encode() for others")
    penultimate = getattr(pipe, "text_encoder_2", None) is not None
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        feats = []
        for tok, te in pairs:
            n = min(length or tok.model_max_length, tok.model_max_length)
            ids = tok(chunk, padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
            mask = torch.ones_like(ids)
            for k, p in enumerate(chunk):
                if mask_words is not None:
                    s, e = concept_span(tok, p, mask_words[i + k])
                    mask[k, s:e] = 0
            with torch.no_grad():
                res = te(ids.to(device), attention_mask=mask.to(device), output_hidden_states=penultimate)
            feats.append((res.hidden_states[-2] if penultimate else res.last_hidden_state).to(keep, torch.float32))
        out.append(torch.cat(feats, dim=-1))
    return torch.cat(out)


def encode_masked(pipe, prompts: list[str], words: list[str]) -> torch.Tensor:
    """Full-length features of ``prompts`` with each prompt's ``words`` masked out of the encoders'
    attention (the concept's "natural fallback")."""
    return encode_features(pipe, prompts, mask_words=words)


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special, truncation=True,
                     max_length=tokenizer.model_max_length).input_ids


def concept_span(tokenizer, prompt: str, concept: str) -> tuple[int, int]:
    """``[start, end)`` token positions of ``concept`` inside the tokenized ``prompt``.

    Raises ``ValueError`` if the concept's tokens do not occur in the prompt.
    """
    ids, sub = _ids(tokenizer, prompt, True), _ids(tokenizer, concept, False)
    if not sub:
        raise ValueError(f"concept {concept!r} has no tokens")
    for s in range(len(ids) - len(sub) + 1):
        if ids[s:s + len(sub)] == sub:
            return s, s + len(sub)
    raise ValueError(f"concept {concept!r} does not occur in prompt {prompt!r}")


def positions(tokenizer, prompt: str, concept: str, policy: TokenPolicy, length: int) -> list[int]:
    """Positions that represent ``concept`` in ``prompt`` under ``policy`` (``length`` = sequence length)."""
    start, end = concept_span(tokenizer, prompt, concept)
    if TokenPolicy(policy) is TokenPolicy.last:
        return [end - 1]
    return list(range(start, length))
