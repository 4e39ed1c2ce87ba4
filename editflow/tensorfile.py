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
    """Write ``tensors`` to ``path`` through ``<path>.tmp``; a failure removes the temporary file and
    is one :class:`EditflowError` (the previous file, if any, is left as it was)."""
    path = Path(path)
    if path.is_dir():
        raise EditflowError(f"cannot write {path}: it is a folder")
    if path.exists() and not path.is_file():
        raise EditflowError(f"cannot write {path}: it exists and is not a regular file")
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        tmp.replace(path)
    except Exception as exc:  # OSError, or safetensors' own error type for I/O
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        text = str(exc).strip()
        msg = getattr(exc, "strerror", None) or (text.splitlines()[0] if text else type(exc).__name__)
        raise EditflowError(f"cannot write {path}: {msg}") from None
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
