"""Which weights an edit touches: module-name patterns per architecture, as configuration.

Closed-form concept editing (UCE, ACE, TIME before them) rewrites the projections that read the
text: the cross-attention key and value maps ``attn2.to_k`` / ``attn2.to_v`` of every
transformer block. Their names are the same in the embedded model, SD 1.x, SD 2.x and SDXL
(diffusers layout), so one pattern set serves all; a user can pass others.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch

DEFAULT_PATTERNS = ("*attn2.to_k", "*attn2.to_v")


@dataclass(frozen=True)
class TargetSpec:
    """Glob patterns over ``unet.named_modules()`` names; each match must be a Linear.

    ``reads_text`` (closed-form edits, ESD-x): the matches are bias-free projections of the text
    features, all of one input width. Edits of other layers (ESD-u's self-attention) set it False.
    """

    patterns: tuple[str, ...] = field(default=DEFAULT_PATTERNS)
    reads_text: bool = True

    def find(self, unet: torch.nn.Module) -> dict[str, torch.nn.Linear]:
        found = {name: m for name, m in unet.named_modules()
                 if any(fnmatch.fnmatchcase(name, p) for p in self.patterns)}
        if not found:
            raise ValueError(f"no module of the UNet matches {list(self.patterns)}")
        for name, m in found.items():
            if not isinstance(m, torch.nn.Linear):
                raise ValueError(f"target {name} is a {type(m).__name__}, not a Linear")
        if not self.reads_text:
            return dict(sorted(found.items()))
        for name, m in found.items():
            if m.bias is not None:
                raise ValueError(f"target {name} has a bias; closed-form edits expect bias-free projections")
        widths = {m.in_features for m in found.values()}
        if len(widths) != 1:
            raise ValueError(f"targets read text features of different widths {sorted(widths)}")
        return dict(sorted(found.items()))
