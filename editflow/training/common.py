"""Shared training utilities of the embedded model: learning-rate schedule, resumable checkpoints."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from editflow.errors import EditflowError


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
    """A resumable training state stored as one ``torch.save`` file: module and optimizer states,
    step count and RNG states, as tensors and plain values only (the Python RNG state is a tuple of
    ints), so it loads with ``torch.load(weights_only=True)``: a planted or foreign file that needs
    arbitrary unpickling is refused with an :class:`EditflowError`, never run.

    Writes go to a temporary file that is renamed into place, so a crash mid-write leaves the
    previous checkpoint intact.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, step: int, rng: random.Random, gen: torch.Generator, **states) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        version, internal, gauss = rng.getstate()
        payload = {
            "step": int(step),
            "py_rng": [int(version), torch.tensor(internal, dtype=torch.int64),
                       None if gauss is None else float(gauss)],
            "torch_gen": gen.get_state(),
            "states": {k: v.state_dict() for k, v in states.items()},
        }
        tmp = self.path.with_suffix(".tmp")
        try:
            torch.save(payload, tmp)
            tmp.replace(self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read(self) -> dict:
        """The saved payload, loaded weights-only; anything else is one :class:`EditflowError`."""
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # UnpicklingError for code or foreign classes, others for a file that is not torch's
            raise EditflowError(f"{self.path} is not a checkpoint editflow wrote (it does not load weights-only; "
                                "refused, nothing in it was run): delete it to start that stage afresh") from None
        if not (isinstance(payload, dict) and {"step", "py_rng", "torch_gen", "states"} <= set(payload)):
            raise EditflowError(f"{self.path} is not a checkpoint editflow wrote (unexpected content); "
                                "delete it to start that stage afresh")
        return payload

    def step(self) -> int:
        return int(self.read()["step"])

    def load(self, rng: random.Random, gen: torch.Generator, **states) -> int:
        payload = self.read()
        try:
            for k, v in states.items():
                v.load_state_dict(payload["states"][k])
            version, internal, gauss = payload["py_rng"]
            internal = internal.tolist() if torch.is_tensor(internal) else internal  # older files: a tuple
            rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
            gen.set_state(payload["torch_gen"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EditflowError(f"{self.path} does not fit this training run ({first}); delete it to start "
                                "that stage afresh") from None
        return int(payload["step"])
