"""ACE: align the model's conditional behaviour on a concept with a neutral distribution.

The update per projection is the closed form of :mod:`editflow.edits.closed_form`,
``ΔW = W (E* - E) Eᵀ (λI + E Eᵀ + s_p M)⁻¹`` (low rank by construction; truncated to the
directions holding ``rank_energy`` of the update), with the neutral targets ``E*`` chosen by
:class:`NeutralTarget` and pushed past the neutral point by ``guidance`` (η), and it is applied
through a gate calibrated from erase vs preserve embeddings (:mod:`editflow.edits.gate`), so
unrelated tokens pass through.
"""

from __future__ import annotations

import torch

from editflow.edits.ace.config import ACEConfig, NeutralTarget
from editflow.edits.closed_form import solve_edit
from editflow.edits.conditioning import concept_span, encode, encode_masked
from editflow.edits.gate import calibrate_gate
from editflow.edits.patch import Patch, patch_metadata
from editflow.edits.registry import CLOSED_FORM
from editflow.edits.request import EraseRequest
from editflow.edits.streaming import PreserveCache, stream_statistics
from editflow.edits.targets import TargetSpec


def fallback_targets(pipe, prompts: list[str], words: list[str], c: torch.Tensor) -> torch.Tensor:
    """Features of each prompt with the concept's tokens masked out of the text encoders'
    attention (its "natural fallback"); the concept's own positions take the empty prompt's."""
    out = encode_masked(pipe, prompts, words)
    empty = encode(pipe, [""])[0]
    for k, (p, w) in enumerate(zip(prompts, words)):
        s, e = concept_span(pipe.tokenizer, p, w)
        out[k, s:e] = empty[s:e]
    return out


class ACE:
    name = "ace"
    kind = CLOSED_FORM
    config_class = ACEConfig

    def compute(self, pipe, request: EraseRequest, config: ACEConfig, targets: TargetSpec | None = None,
                cache: PreserveCache | None = None, progress=None) -> Patch:
        targets = targets or TargetSpec()
        weights = {n: m.weight.detach() for n, m in targets.find(pipe.unet).items()}
        if config.target is NeutralTarget.empty:
            targets_fn = lambda prompts, words, c: encode(pipe, [""]).expand(len(prompts), -1, -1)  # noqa: E731
        elif config.target is NeutralTarget.zero:
            targets_fn = lambda prompts, words, c: torch.zeros_like(c)  # noqa: E731
        elif config.target is NeutralTarget.fallback:
            targets_fn = lambda prompts, words, c: fallback_targets(pipe, prompts, words, c)  # noqa: E731
        else:
            targets_fn = None
        streamed = stream_statistics(pipe, request, targets_fn=targets_fn, guidance=config.guidance,
                                     preserve_context=config.preserve_context, cache=cache,
                                     progress=progress)
        edit = solve_edit(weights, streamed.stats, config.lam, config.erase_scale, config.preserve_scale,
                          energy=config.rank_energy)
        gate = None
        if config.gated and edit.rank > 0:
            gate = calibrate_gate(streamed.stats, streamed.erase_sample, streamed.preserve_sample,
                                  max_rank=config.gate_max_rank)
        extra = {"rank": edit.rank, "gated": gate is not None}
        return Patch(edit, gate, patch_metadata(pipe, request, self.name, config, targets, extra))
