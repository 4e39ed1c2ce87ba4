"""Shared training utilities: seeded generators, resumable checkpoints, progress bars."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm


def progress(total: int, desc: str, initial: int = 0, disable: bool | None = None):
    """A tqdm bar on stderr; silent when ``EDITFLOW_QUIET`` is set."""
    if disable is None:
        disable = bool(os.environ.get("EDITFLOW_QUIET"))
    return tqdm(total=total, desc=desc, initial=initial, disable=disable, dynamic_ncols=True, leave=False)


def track(iterable, desc: str):
    """Iterate with a progress bar (same quiet switch as :func:`progress`)."""
    return tqdm(iterable, desc=desc, disable=bool(os.environ.get("EDITFLOW_QUIET")),
                dynamic_ncols=True, leave=False)


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """LR multiplier: linear warm-up, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def set_lr(opt: torch.optim.Optimizer, base_lr: float, step: int, total: int, warmup: int) -> None:
    """Apply the :func:`warmup_cosine` schedule for ``step`` to every parameter group."""
    for g in opt.param_groups:
        g["lr"] = base_lr * warmup_cosine(step, total, warmup)


class Checkpoint:
    """A resumable training state stored as one ``torch.save`` file (own files, never loaded
    from elsewhere): module and optimizer states, step count and RNG states.

    Writes go to a temporary file that is renamed into place, so a crash mid-write leaves the
    previous checkpoint intact.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, step: int, rng: random.Random, gen: torch.Generator, **states) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "step": step,
            "py_rng": rng.getstate(),
            "torch_gen": gen.get_state(),
            "states": {k: v.state_dict() for k, v in states.items()},
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(self.path)

    def load(self, rng: random.Random, gen: torch.Generator, **states) -> int:
        payload = torch.load(self.path, map_location="cpu", weights_only=False)
        for k, v in states.items():
            v.load_state_dict(payload["states"][k])
        rng.setstate(payload["py_rng"])
        gen.set_state(payload["torch_gen"])
        return int(payload["step"])
