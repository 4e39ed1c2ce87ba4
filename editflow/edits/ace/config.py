from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class NeutralTarget(str, Enum):
    anchor = "anchor"  # the concept's anchor word (empty anchor = the template without the concept)
    empty = "empty"  # the empty prompt ""
    fallback = "fallback"  # the same prompt with the concept's tokens masked out of the encoder's attention
    zero = "zero"  # nullification: the concept's features map to zero keys/values (−η c with guidance η)


@dataclass
class ACEConfig:
    """Attentional concept erasure: gated low-rank nullification of concept directions in K/V.

    Defaults measured on the embedded world (docs/benchmarks.md, "Erasure quality"): η = 1 and
    32 context templates take object and style detection to <= 2 %, where η = 0 leaves 5-16 %.
    """

    lam: float = field(default=0.5, metadata={"help": "λ: weight of staying close to W_old"})
    erase_scale: float = field(default=1.0, metadata={"help": "s_e: weight of the erase targets"})
    preserve_scale: float = field(default=1.0, metadata={"help": "s_p: weight of the preserved concepts"})
    target: NeutralTarget = field(default=NeutralTarget.anchor, metadata={"help": "neutral distribution to align with"})
    guidance: float = field(default=1.0, metadata={
        "help": "η: step the targets past the neutral point, away from the concept (c* = a - η(c - a)); 0 = align"})
    rank_energy: float = field(default=0.999, metadata={
        "help": "keep the fewest edit directions holding this share of the update's energy (1 = exact)"})
    gated: bool = field(default=True, metadata={"help": "apply ΔW only to text features in the concept subspace"})
    preserve_context: bool = field(default=True, metadata={
        "help": "keep context tokens (before the concept, all of the preserve prompts) unchanged"})
    gate_max_rank: int = field(default=64, metadata={"help": "largest dimension of the gate's subspace"})

    def __post_init__(self):
        self.target = NeutralTarget(self.target)
        if self.lam <= 0:
            raise ValueError("lam must be > 0 (it keeps the system positive definite)")
        if self.erase_scale < 0 or self.preserve_scale < 0:
            raise ValueError("erase_scale and preserve_scale must be >= 0")
        if self.guidance < 0:
            raise ValueError("guidance must be >= 0")
        if not 0 < self.rank_energy <= 1:
            raise ValueError("rank_energy must be in (0, 1]")
        if self.gate_max_rank < 1:
            raise ValueError("gate_max_rank must be >= 1")
