"""LoRA / kohya exports load with diffusers itself and reproduce the merged (ungated) patch."""

import pytest
import torch

from editflow.edits import ConceptSpec, EraseRequest, get_method
from editflow.edits.ace import ACEConfig
from editflow.edits.export import ExportFormat, export_lora
from editflow.edits.uce import UCEConfig
from tests.tiny import tiny_sd_pipeline


def _unet_out(pipe):
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    cond = pipe.encode_prompt(["a red star", "a blue circle"], "cpu", 1, False)[0]
    with torch.no_grad():
        return pipe.unet(x, t, cond).sample


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_lora_export_matches_merged_patch(tmp_path, world, fmt):
    pipe = tiny_sd_pipeline(tmp_path, world)
    req = EraseRequest([ConceptSpec("star", ("pentagram",), anchor="shape")], preserve=["circle"])
    patch = get_method("uce").compute(pipe, req, UCEConfig())
    base = _unet_out(pipe)
    with patch.apply(pipe, mode="merge"):
        merged = _unet_out(pipe)
    path = export_lora(patch, tmp_path / ("lora" if fmt is ExportFormat.lora else "kohya.safetensors"), fmt)
    if fmt is ExportFormat.lora:
        pipe.load_lora_weights(path.parent, adapter_name="erase")
    else:
        pipe.load_lora_weights(path.parent, weight_name=path.name, adapter_name="erase")
    loaded = _unet_out(pipe)
    assert not torch.allclose(base, merged)
    assert torch.allclose(loaded, merged, atol=1e-5), (loaded - merged).abs().max()
    pipe.unload_lora_weights()
    assert torch.allclose(_unet_out(pipe), base, atol=1e-6)


def test_gated_patch_exports_its_ungated_edit(tmp_path, world):
    from safetensors import safe_open

    pipe = tiny_sd_pipeline(tmp_path, world)
    patch = get_method("ace").compute(pipe, EraseRequest([ConceptSpec("star")], ["circle"]), ACEConfig())
    path = export_lora(patch, tmp_path / "lora")
    with safe_open(path, "pt") as f:
        assert f.metadata()["editflow_gate_dropped"] == "true"


def test_empty_patch_has_no_lora(tmp_path, world):
    pipe = tiny_sd_pipeline(tmp_path, world)
    patch = get_method("uce").compute(pipe, EraseRequest([], ["circle"]), UCEConfig())
    with pytest.raises(ValueError, match="rank 0"):
        export_lora(patch, tmp_path / "lora")
