"""ACE: align the model's conditional behaviour on a concept with a neutral distribution.

The update per projection is the closed form of :mod:`editflow.edits.closed_form`,
``ΔW = W (E* - E) Eᵀ (λI + E Eᵀ + s_p M)⁻¹`` (low rank by construction), with the neutral
targets ``E*`` chosen by :class:`NeutralTarget`, and it is applied through a gate calibrated
from erase vs preserve embeddings (:mod:`editflow.edits.gate`) so unrelated tokens pass through.
"""

from __future__ import annotations

import torch

from editflow.edits.ace.config import ACEConfig, NeutralTarget
from editflow.edits.closed_form import solve_edit
from editflow.edits.conditioning import concept_span, encode
from editflow.edits.gate import calibrate_gate
from editflow.edits.patch import Patch
from editflow.edits.request import EraseRequest, stream_statistics
from editflow.edits.targets import TargetSpec
from editflow.edits.uce.method import metadata


def fallback_targets(pipe, prompts: list[str], words: list[str], c: torch.Tensor) -> torch.Tensor:
    """Features of each prompt with the concept's tokens masked out of the text encoder's
    attention (its "natural fallback"); the concept's own positions take the empty prompt's."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise ValueError("fallback targets support single-text-encoder pipelines; use anchor or empty for SDXL")
    tok, te = pipe.tokenizer, pipe.text_encoder
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    mask = torch.ones_like(ids)
    spans = [concept_span(tok, p, w) for p, w in zip(prompts, words)]
    for k, (s, e) in enumerate(spans):
        mask[k, s:e] = 0
    with torch.no_grad():
        out = te(ids.to(te.device), attention_mask=mask.to(te.device)).last_hidden_state.float().cpu()
    empty = encode(pipe, [""])[0]
    for k, (s, e) in enumerate(spans):
        out[k, s:e] = empty[s:e]
    return out


class ACE:
    name = "ace"
    config_class = ACEConfig

    def compute(self, pipe, request: EraseRequest, config: ACEConfig, targets: TargetSpec | None = None,
                progress=None) -> Patch:
        targets = targets or TargetSpec()
        weights = {n: m.weight.detach() for n, m in targets.find(pipe.unet).items()}
        if config.target is NeutralTarget.empty:
            targets_fn = lambda prompts, words, c: encode(pipe, [""]).expand(len(prompts), -1, -1)  # noqa: E731
        elif config.target is NeutralTarget.fallback:
            targets_fn = lambda prompts, words, c: fallback_targets(pipe, prompts, words, c)  # noqa: E731
        else:
            targets_fn = None
        streamed = stream_statistics(pipe, request, targets_fn=targets_fn,
                                     preserve_context=config.preserve_context, progress=progress)
        edit = solve_edit(weights, streamed.stats, config.lam, config.erase_scale, config.preserve_scale)
        gate = None
        if config.gated and edit.rank > 0:
            gate = calibrate_gate(streamed.stats, streamed.erase_sample, streamed.preserve_sample,
                                  max_rank=config.gate_max_rank)
        extra = {"rank": edit.rank, "gated": gate is not None}
        return Patch(edit, gate, metadata(pipe, request, self.name, config, targets, extra))
