"""Text features at chosen token positions: the vectors ``c`` closed-form edits act on.

Features come from the pipeline's own ``encode_prompt`` (so SD 1.x/2.x give their CLIP states and
SDXL its two encoders concatenated to 2048-d), i.e. exactly what the UNet's ``to_k``/``to_v`` read.

Token policy (UCE, Gandikota et al. WACV 2024): which positions of a prompt stand for the
concept. ``last`` takes the concept's last token (the current reference code); ``through_pad``
takes every position from the concept's first token to the end of the padded sequence (the 2023
reference): a causal encoder carries the concept into all later positions.
"""

from __future__ import annotations

from enum import Enum

import torch


class TokenPolicy(str, Enum):
    last = "last"
    through_pad = "through_pad"


def encode(pipe, prompts: list[str], batch: int = 64) -> torch.Tensor:
    """``(N, L, d)`` float32 text features of ``prompts`` as the UNet receives them."""
    device = pipe.unet.device
    out = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            emb = pipe.encode_prompt(prompt=prompts[i:i + batch], device=device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)[0]
            out.append(emb.float().cpu())
    return torch.cat(out)


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
