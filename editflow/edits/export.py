"""Export a patch's ungated edit as a LoRA that other tools load.

``ΔW_l = up_l @ down`` is exactly a LoRA with ``B = up_l``, ``A = down`` and ``alpha = rank``
(scale 1). The keys are peft's (``<module>.lora_A.weight`` / ``lora_B.weight``), written by
diffusers itself in two namings:

* ``lora`` -- diffusers' ``save_lora_weights`` (``unet.<module>.lora_A.weight``; ``pipe.load_lora_weights(dir)``
  loads ``pytorch_lora_weights.safetensors``);
* ``kohya`` -- diffusers' ``convert_state_dict_to_kohya`` (``lora_unet_<module_with_underscores>.lora_down.weight``
  / ``lora_up.weight`` / ``alpha``: AUTOMATIC1111, ComfyUI; diffusers converts it back on load).

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


def peft_state_dict(patch: Patch) -> dict[str, torch.Tensor]:
    """The edit as peft's LoRA keys of the UNet's modules (no prefix)."""
    if patch.edit.rank == 0:
        raise ValueError("the patch changes nothing (rank 0); there is no LoRA to export")
    sd: dict[str, torch.Tensor] = {}
    for name, up in patch.edit.up.items():
        sd[f"{name}.lora_A.weight"] = patch.edit.down_for(name).contiguous().clone()
        sd[f"{name}.lora_B.weight"] = up.contiguous()
    return sd


def lora_state_dict(patch: Patch, fmt: ExportFormat = ExportFormat.lora) -> dict[str, torch.Tensor]:
    """The tensors an export writes, keyed as ``fmt`` names them."""
    from diffusers.utils import convert_state_dict_to_kohya

    sd = {f"unet.{k}": v for k, v in peft_state_dict(patch).items()}
    return sd if ExportFormat(fmt) is ExportFormat.lora else convert_state_dict_to_kohya(sd)


def export_lora(patch: Patch, out: str | Path, fmt: ExportFormat = ExportFormat.lora) -> Path:
    """Write the LoRA file; ``out`` is a folder (``lora``) or a ``.safetensors`` path (``kohya``)."""
    fmt = ExportFormat(fmt)
    out = Path(out)
    meta = {"format": "pt", "editflow_method": str(patch.metadata.get("method", "")),
            "editflow_base_hash": str(patch.metadata.get("base_hash", "")),
            "editflow_gate_dropped": str(patch.gate is not None).lower()}
    if fmt is ExportFormat.kohya:
        return tensorfile.write(out, lora_state_dict(patch, fmt), meta)
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    folder, weight_name = (out.parent, out.name) if out.suffix == ".safetensors" else (out, LORA_WEIGHT_NAME)
    # diffusers names and packs the keys; the file is written atomically with editflow's metadata
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        folder, unet_lora_layers=peft_state_dict(patch), weight_name=weight_name,
        save_function=lambda tensors, path: tensorfile.write(path, tensors, meta))
    return folder / weight_name
