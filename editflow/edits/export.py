"""Export a patch's ungated edit as a LoRA that other tools load.

``ΔW_l = up_l @ down`` is exactly a LoRA with ``B = up_l``, ``A = down`` and ``alpha = rank``
(scale 1). Two namings:

* ``lora`` -- diffusers/peft keys, ``unet.<module>.lora_A.weight`` / ``lora_B.weight``
  (``pipe.load_lora_weights(dir)`` loads ``pytorch_lora_weights.safetensors``);
* ``kohya`` -- kohya/A1111 keys, ``lora_unet_<module_with_underscores>.lora_down.weight`` /
  ``lora_up.weight`` / ``alpha``, which diffusers also converts on load.

A gated patch exports its ungated edit (the gate has no LoRA equivalent); the export says so.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import torch

from editflow import tensorfile
from editflow.edits.patch import Patch

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class ExportFormat(str, Enum):
    lora = "lora"
    kohya = "kohya"


def lora_state_dict(patch: Patch, fmt: ExportFormat = ExportFormat.lora) -> dict[str, torch.Tensor]:
    if patch.edit.rank == 0:
        raise ValueError("the patch changes nothing (rank 0); there is no LoRA to export")
    sd: dict[str, torch.Tensor] = {}
    for name, up in patch.edit.up.items():
        down = patch.edit.down_for(name).contiguous()
        if ExportFormat(fmt) is ExportFormat.lora:
            sd[f"unet.{name}.lora_A.weight"] = down.clone()
            sd[f"unet.{name}.lora_B.weight"] = up.contiguous()
        else:
            key = "lora_unet_" + name.replace(".", "_")
            sd[f"{key}.lora_down.weight"] = down.clone()
            sd[f"{key}.lora_up.weight"] = up.contiguous()
            sd[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))
    return sd


def export_lora(patch: Patch, out: str | Path, fmt: ExportFormat = ExportFormat.lora) -> Path:
    """Write the LoRA file; ``out`` is a folder (``lora``) or a ``.safetensors`` path (``kohya``)."""
    fmt = ExportFormat(fmt)
    out = Path(out)
    path = out / LORA_WEIGHT_NAME if fmt is ExportFormat.lora and out.suffix != ".safetensors" else out
    meta = {"editflow_method": str(patch.metadata.get("method", "")),
            "editflow_base_hash": str(patch.metadata.get("base_hash", "")),
            "editflow_gate_dropped": str(patch.gate is not None).lower()}
    return tensorfile.write(path, lora_state_dict(patch, fmt), meta)
