"""safetensors files editflow writes for users (patches, learned tokens, LoRA exports): written
atomically (a temporary file renamed into place, so nothing half-written is left behind) and read
with one clear error for a missing or foreign file."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from editflow.errors import EditflowError


def write(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    tmp.replace(path)
    return path


def read(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of the file; ``what`` names it in errors ("patch", ...)."""
    path = Path(path)
    if not path.is_file():
        raise EditflowError(f"{what} not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise EditflowError(f"{path} is not a safetensors {what}: {exc}") from None
