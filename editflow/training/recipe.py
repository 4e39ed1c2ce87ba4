"""The training recipe of the embedded model, loaded from ``configs/world/embedded.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from editflow.models.components import EmbeddedArchitecture


@dataclass
class StageConfig:
    """Optimisation settings of one training stage."""

    steps: int
    batch: int
    lr: float
    warmup: int = 100
    checkpoint_every: int = 250


@dataclass
class Recipe:
    """Everything ``editflow world train`` needs: sizes, data, and per-stage optimisation."""

    seed: int = 0
    dataset_size: int = 48000
    cfg_dropout: float = field(default=0.1, metadata={"help": "share of empty captions (for CFG)"})
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    architecture: EmbeddedArchitecture = field(default_factory=EmbeddedArchitecture)
    text_encoder: StageConfig = field(default_factory=lambda: StageConfig(300, 256, 1e-3, warmup=30))
    vae: StageConfig = field(default_factory=lambda: StageConfig(1200, 64, 1e-3))
    unet: StageConfig = field(default_factory=lambda: StageConfig(3600, 64, 5e-4, warmup=150))
    evaluator: StageConfig = field(default_factory=lambda: StageConfig(2000, 64, 1e-3))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; valid: {sorted(known)}")
        kw = dict(raw)
        if "architecture" in kw:
            kw["architecture"] = EmbeddedArchitecture(**kw["architecture"])
        for stage in ("text_encoder", "vae", "unet", "evaluator"):
            if stage in kw:
                kw[stage] = StageConfig(**kw[stage])
        return cls(**kw)
