"""Where a model runs and in which precision: ``--device`` / ``--dtype`` (and ``EDITFLOW_DEVICE`` /
``EDITFLOW_DTYPE``) turned into a ``torch.device`` and ``torch.dtype``.

``auto`` picks CUDA when one is available, else the CPU; the dtype ``auto`` is float16 on CUDA and
float32 elsewhere (the CPU has no fast float16 kernels; bfloat16 works there and is what the tests
use to exercise reduced precision). Asking for a device that is not there is a one-line error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from editflow.errors import EditflowError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DEVICE_ENV, DTYPE_ENV = "EDITFLOW_DEVICE", "EDITFLOW_DTYPE"
DEVICE_SPEC = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(spec: str | None = None) -> torch.device:
    """``auto`` (default), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; ``None`` reads ``EDITFLOW_DEVICE``."""
    spec = (spec or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise EditflowError(f"unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EditflowError(f"device {spec!r} asked for, but this machine has no usable CUDA device "
                                "(torch.cuda.is_available() is False); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EditflowError(f"device {spec!r} asked for, but there are only {torch.cuda.device_count()} "
                                "CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise EditflowError("device 'mps' asked for, but this machine has no usable MPS device")
    elif device.type != "cpu":
        raise EditflowError(f"unsupported device {spec!r}; valid: auto, cpu, cuda, cuda:N, mps")
    return device


def resolve_dtype(spec: str | None, device: torch.device) -> torch.dtype:
    """``auto`` (default), ``float32``, ``float16`` or ``bfloat16``; ``None`` reads ``EDITFLOW_DTYPE``."""
    spec = (spec or os.environ.get(DTYPE_ENV) or "auto").strip().lower()
    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if spec not in DTYPES:
        raise EditflowError(f"unknown dtype {spec!r}; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[spec]


def solve_device(device: torch.device | str) -> torch.device:
    """Where float64 statistics and solves run for tensors on ``device``: there, unless it has no
    float64 (MPS), then the CPU."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def check_placement(device: str | None, dtype: str | None, where: str = "") -> None:
    """Refuse a device or dtype *name* that :func:`~editflow.models.device.Placement.resolve` would not
    know, without looking at the hardware (a policy or job may be checked on another machine than the
    one that runs it). ``None`` is fine: ``EDITFLOW_DEVICE`` / ``EDITFLOW_DTYPE``, else ``auto``."""
    prefix = f"{where}: " if where else ""
    if device is not None and (not isinstance(device, str) or not DEVICE_SPEC.match(device.strip().lower())):
        raise EditflowError(f"{prefix}unknown device {device!r}; valid: auto, cpu, cuda, cuda:N, mps")
    if dtype is not None and (not isinstance(dtype, str) or dtype.strip().lower() not in ("auto", *DTYPES)):
        raise EditflowError(f"{prefix}unknown dtype {dtype!r}; valid: auto, {', '.join(DTYPES)}")


@dataclass(frozen=True)
class Placement:
    """A resolved device and dtype, passed down to everything that loads or runs a model."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def resolve(cls, device: str | None = None, dtype: str | None = None) -> Placement:
        d = resolve_device(device)
        return cls(d, resolve_dtype(dtype, d))

    @property
    def solve_device(self) -> torch.device:
        return solve_device(self.device)


def check_offload(device: torch.device) -> None:
    """Model CPU offload moves each model to an accelerator while it runs: refuse it on the CPU."""
    if torch.device(device).type == "cpu":
        raise EditflowError("--offload keeps the models on the CPU and moves each to the GPU while it runs; "
                            "it needs --device cuda (or mps), and this run is on the CPU")
