"""Random-weight SD 1.5 / SDXL checkpoints on disk (``editflow.models.reference.save_pipeline``)
and the real-size benchmark (``bench/real_size.py``).

A saved folder must load like a real checkpoint: through ``load_pipeline`` / ``--model FOLDER``
and plain diffusers, with the same configuration and weights (rounded once when stored in float16).
The quick tests shrink the models (``width``); the slow one writes a full-size SD 1.5.
"""

from __future__ import annotations

import gc
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from editflow.cli import app
from editflow.edits.targets import TargetSpec
from editflow.models import pipeline as pipeline_module
from editflow.models.pipeline import describe, load_pipeline
from editflow.models.reference import build_pipeline, save_pipeline

ROOT = Path(__file__).resolve().parent.parent
N_CROSS = {"sd15": 16, "sdxl": 70}  # cross-attention layers (transformer blocks)


def _public(config) -> dict:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in d.items() if not k.startswith("_") and k not in ("dtype", "torch_dtype")}


def _components(pipe) -> dict:
    return {n: c for n, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


@pytest.fixture(scope="module")
def tokenizer(embedded_pipe):
    return embedded_pipe.tokenizer


@pytest.mark.parametrize("arch, dtype", [("sd15", None), ("sdxl", torch.float16)])
def test_saved_folder_loads_like_a_checkpoint(arch, dtype, tokenizer, tmp_path, monkeypatch):
    pipe = build_pipeline(arch, tokenizer, width=0.1, text_layers=2)
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in _components(pipe).items()}
    folder = save_pipeline(pipe, tmp_path / arch, dtype=dtype)
    assert sorted(p.name for p in tmp_path.iterdir()) == [arch]  # no partial folder left behind
    # the caller's pipeline is untouched: same tensors, same dtype, not rounded
    for n, m in _components(pipe).items():
        for k, v in m.state_dict().items():
            assert v.dtype == torch.float32 and torch.equal(v, before[n][k]), (n, k)
    if dtype is not None:
        from safetensors import safe_open

        with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}

    # `editflow info --model FOLDER` loads it through load_pipeline; keep what it loaded (one load, not two)
    loads = []

    def spy(*args, **kwargs):
        loads.append(real_load(*args, **kwargs))
        return loads[-1]

    real_load = pipeline_module.load_pipeline
    for var in ("EDITFLOW_DEVICE", "EDITFLOW_DTYPE"):  # auto: float32 on this CPU
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pipeline_module, "load_pipeline", spy)
    res = CliRunner().invoke(app, ["info", "--model", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["pipeline"] == type(pipe).__name__
    assert info["cross_attention_layers"] == N_CROSS[arch]
    assert info["cross_attention_dim"] == {"sd15": 768, "sdxl": 2048}[arch]
    assert info["image_size"] == {"sd15": 512, "sdxl": 1024}[arch]

    (loaded,) = loads
    assert type(loaded) is type(pipe)
    for n, m in _components(pipe).items():
        other = getattr(loaded, n)
        assert type(other) is type(m) and _public(other.config) == _public(m.config), n
        got = other.state_dict()
        assert got.keys() == before[n].keys(), n
        for k, v in before[n].items():
            want = v.to(dtype).to(v.dtype) if dtype is not None and v.is_floating_point() else v
            assert torch.equal(got[k], want), (n, k)
    assert type(loaded.scheduler) is type(pipe.scheduler)
    assert _public(loaded.scheduler.config) == _public(pipe.scheduler.config)
    assert loaded.tokenizer.model_max_length == 77
    assert describe(loaded) == describe(pipe)


def test_saved_sd15_loads_with_plain_diffusers(tokenizer, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = save_pipeline(build_pipeline("sd15", tokenizer, width=0.1, text_layers=2), tmp_path / "m")
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.safety_checker is None and pipe.unet.config.cross_attention_dim == 768
    with pytest.raises(FileExistsError):
        save_pipeline(pipe, folder)


def test_bench_real_size_quick_run():
    """The benchmark end to end at a tiny width (same code as full size): every stage measured."""
    proc = subprocess.run([sys.executable, "bench/real_size.py", "--quick", "--arch", "sd15", "--dtypes", "float32"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"\| ([a-z ()]+) \| sd15 \| float32 \| ([\d.e+-]+)[^|]*\| ([\d.-]+) \|", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), m.group(3))
    assert set(rows) == {"build", "encode", "solve", "write", "step", "decode", "eval (extrapolated)"}
    for stage, (seconds, peak) in rows.items():
        assert seconds > 0, stage
        assert stage.startswith("eval") or float(peak) > 0, stage
    result = json.loads(proc.stdout.strip().splitlines()[-1])["results"][0]
    for stage, st in result["stages"].items():
        assert st["seconds"] > 0 and st["peak_gb"] > 0 and st["host_peak_gb"] > 0, stage
    # naked and nudity's five other words (editflow.families), 5 templates each, and their targets
    assert result["stages"]["encode"]["prompts"] == 60
    assert result["stages"]["solve"]["rank"] > 0
    cost = result["eval"]
    # the shipped suite: 24 explicit + 60 leakage + 238 everyday captions, original + patched, at SD 1.5's 50 steps
    assert (cost["target_images"], cost["leakage_images"], cost["preserved_images"]) == (24, 60, 238)
    assert cost["images"] == 644 and cost["steps"] == 50 and cost["guidance"] == 7.5
    assert cost["attack_inversion_steps"] == 450  # 3 tries x 150 steps
    assert cost["total_s"] > 644 * 50 * result["stages"]["step"]["seconds"]


@pytest.mark.slow
def test_full_size_sd15_checkpoint_round_trip(tokenizer, tmp_path):
    """A real-size SD 1.5 written in float16 (~2.1 GB, as published) and read back through
    ``load_pipeline``: architecture and cross-attention weights as stored. Peak ~7 GB of memory;
    the folder is deleted after (pytest keeps its temporary folders otherwise)."""
    torch.set_num_threads(2)
    pipe = build_pipeline("sd15", tokenizer)
    want = {n: m.weight.detach().half().float() for n, m in TargetSpec().find(pipe.unet).items()}
    summary = describe(pipe)
    folder = tmp_path / "sd15"
    try:
        save_pipeline(pipe, folder, dtype=torch.float16)
        del pipe
        gc.collect()
        size = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
        assert 1.9e9 < size < 2.3e9
        loaded = load_pipeline(folder)
        assert describe(loaded) == summary and summary["unet_parameters"] > 8.5e8
        got = TargetSpec().find(loaded.unet)
        assert got.keys() == want.keys() and len(got) == 32
        for n, w in want.items():
            assert torch.equal(got[n].weight, w), n
    finally:
        shutil.rmtree(folder, ignore_errors=True)
