"""ACE: gated low-rank concept erasure in cross-attention keys and values."""

from editflow.edits.ace.config import ACEConfig, NeutralTarget
from editflow.edits.ace.method import ACE
from editflow.edits.registry import register

register(ACE())

__all__ = ["ACE", "ACEConfig", "NeutralTarget"]
