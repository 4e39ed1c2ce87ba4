from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ESDConfig:
    """Erased Stable Diffusion (Gandikota et al., ICCV 2023). ``eta`` as published (1.0); steps and
    learning rate scaled to the embedded model (the paper: 1000 steps at 1e-5 on SD 1.4)."""

    eta: float = field(default=1.0, metadata={"help": "η: negative guidance strength of the target"})
    esd_steps: int = field(default=200, metadata={"help": "gradient steps"})
    esd_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    esd_batch: int = field(default=4, metadata={"help": "prompts per step"})
    trajectories: int = field(default=8, metadata={"help": "sampled trajectories x_t are drawn from"})
    sample_steps: int = field(default=25, metadata={"help": "sampler steps of those trajectories"})
    preserve_weight: float = field(default=0.0, metadata={
        "help": "weight of keeping preserved prompts' predictions equal to the base model's (0 = as published)"})
    lora_rank: int = field(default=4, metadata={"help": "ESD-u: rank of the LoRA on each self-attention projection"})
    seed: int = 0

    def __post_init__(self):
        if self.eta < 0:
            raise ValueError("eta must be >= 0")
        if min(self.esd_steps, self.esd_batch, self.trajectories, self.sample_steps, self.lora_rank) < 1:
            raise ValueError("esd_steps, esd_batch, trajectories, sample_steps and lora_rank must be >= 1")
        if self.preserve_weight < 0:
            raise ValueError("preserve_weight must be >= 0")
        if self.esd_lr <= 0:
            raise ValueError("esd_lr must be > 0")
