from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UCEConfig:
    """Unified Concept Editing (Gandikota et al., WACV 2024, eq. 6); defaults as published."""

    lam: float = field(default=0.5, metadata={"help": "λ: weight of staying close to W_old"})
    erase_scale: float = field(default=1.0, metadata={"help": "s_e: weight of the erase targets"})
    preserve_scale: float = field(default=1.0, metadata={"help": "s_p: weight of the preserved concepts"})

    def __post_init__(self):
        if self.lam <= 0:
            raise ValueError("lam must be > 0 (it keeps the system positive definite)")
        if self.erase_scale < 0 or self.preserve_scale < 0:
            raise ValueError("erase_scale and preserve_scale must be >= 0")
