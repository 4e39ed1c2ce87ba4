"""--device / --dtype / --offload on every command that runs a model, in the jobs, flows, policies and
the registry's pyfunc model; generation that survives running out of memory.

No GPU here: CUDA is "missing" (monkeypatched so, on any machine) and reduced precision is bfloat16 on
the CPU. Tests marked "needs bf16 patches" rely on patches applying to a bfloat16 model
(editflow/edits/patch.py's per-dtype base hashes)."""

import json
import logging
import pickle
import types
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from editflow.cli import app
from editflow.cli.app import load_extensions
from editflow.errors import EditflowError
from editflow.jobs.erase import EraseJob
from editflow.jobs.evaluate import EvalJob
from editflow.models.pipeline import (
    GenerationConfig,
    check_offload,
    generate,
    is_out_of_memory,
    memory_savers,
    place,
)
from tests.tiny import tiny_sd_pipeline

runner = CliRunner()
load_extensions(app)  # policy run


def _one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def _commands(out, policy):
    return {
        "generate": ["generate", "--prompt", "a star", "--out", str(out / "g.png")],
        "info": ["info"],
        "erase --patch-only": ["erase", "--concept", "star", "--patch-only", "--out", str(out / "p.safetensors")],
        "erase (flow)": ["erase", "--concept", "star", "--out", str(out / "p.safetensors")],
        "apply": ["apply", "--patch", str(out / "p.safetensors"), "--prompt", "a star", "--out", str(out / "a.png")],
        "eval": ["eval", "--concept", "star", "--out", str(out / "report")],
        "invert": ["invert", "--token", "<t>", "--prompt", "a star", "--out", str(out / "t.safetensors")],
        "world check": ["world", "check"],
        "policy run": ["policy", "run", str(policy)],
    }


@pytest.fixture
def no_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("EDITFLOW_DEVICE", raising=False)
    monkeypatch.delenv("EDITFLOW_DTYPE", raising=False)
    monkeypatch.chdir(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text("name: p\nconcepts: [star]\n")
    return tmp_path / "out", policy


@pytest.mark.parametrize("command", ["generate", "info", "erase --patch-only", "erase (flow)", "apply", "eval",
                                     "invert", "world check", "policy run"])
def test_a_missing_cuda_is_one_line_exit_1_and_creates_nothing(no_cuda, command):
    out, policy = no_cuda
    res = runner.invoke(app, [*_commands(out, policy)[command], "--device", "cuda"])
    assert res.exit_code == 1, res.output
    assert "no usable CUDA" in _one_error_line(res)
    assert not out.exists()


def test_the_environment_is_the_default_and_an_option_wins(no_cuda, monkeypatch):
    out, _ = no_cuda
    monkeypatch.setenv("EDITFLOW_DEVICE", "cuda")
    res = runner.invoke(app, ["generate", "--prompt", "a star", "--out", str(out / "g.png")])
    assert res.exit_code == 1 and "no usable CUDA" in _one_error_line(res) and not out.exists()
    monkeypatch.setenv("EDITFLOW_DTYPE", "bfloat16")
    res = runner.invoke(app, ["info", "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dtype"] == "bfloat16"  # EDITFLOW_DTYPE picked up
    res = runner.invoke(app, ["info", "--json", "--device", "cpu", "--dtype", "float32"])
    assert json.loads(res.stdout)["dtype"] == "float32"  # the option wins


@pytest.mark.parametrize("args, code, message", [
    (["--dtype", "bogus"], 2, "'bogus' is not one of 'auto', 'float32', 'float16', 'bfloat16'"),
    (["--device", "gpu"], 2, "unknown device 'gpu'; valid: auto, cpu, cuda, cuda:N, mps"),
    (["--offload"], 1, "--offload"),  # the CPU has nothing to offload to
])
def test_bad_placements_are_one_line(no_cuda, args, code, message):
    out, _ = no_cuda
    for cmd in (["generate", "--prompt", "a star", "--out", str(out / "g.png")], ["eval", "--concept", "star"]):
        res = runner.invoke(app, [*cmd, *args])
        assert res.exit_code == code, res.output
        assert message in _one_error_line(res)
    assert not out.exists()


def test_generate_in_bfloat16_is_close_to_float32(no_cuda):
    out, _ = no_cuda
    grids = {}
    for dtype in ("float32", "bfloat16"):
        res = runner.invoke(app, ["generate", "--prompt", "a red star", "--n", "2", "--steps", "2", "--device", "cpu",
                                  "--dtype", dtype, "--out", str(out / f"{dtype}.png")])
        assert res.exit_code == 0, res.output
        grids[dtype] = np.asarray(Image.open(out / f"{dtype}.png"), np.float32)
    diff = np.abs(grids["float32"] - grids["bfloat16"])
    assert diff.mean() < 3 and diff.max() < 96, (diff.mean(), diff.max())  # measured: 0.38 and 8


# -- generation under memory pressure ----------------------------------------------------------


@pytest.fixture
def tiny(tmp_path, world):
    return tiny_sd_pipeline(tmp_path, world)


def test_out_of_memory_halves_the_batch_says_so_once_and_draws_the_same_images(tiny, monkeypatch, caplog):
    prompts = ["a red star", "a blue heart", "a picture of zorbo", "a green moon", "a red ball"]
    seeds = [0, 1, 2, 3, 4]
    config = GenerationConfig(steps=2, batch=8)
    whole = generate(tiny, prompts, seeds, config)
    real, sizes = type(tiny).__call__, []

    def small_gpu(self, prompt, **kwargs):  # room for two images at a time
        sizes.append(len(prompt))
        if len(prompt) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, prompt, **kwargs)

    monkeypatch.setattr(type(tiny), "__call__", small_gpu)
    with caplog.at_level(logging.WARNING, logger="editflow.models.pipeline"):
        split = generate(tiny, prompts, seeds, config)
        assert sizes == [5, 2, 2, 1]
        again = generate(tiny, prompts[:3], seeds[:3], config)  # the batch that fitted is remembered
    assert sizes == [5, 2, 2, 1, 2, 1]
    warnings = [r for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(warnings) == 1 and "at batch 5" in warnings[0].getMessage()
    for a, b in zip(whole, split + again[3:]):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1  # batching never changes images
    for a, b in zip(whole, again):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


def test_out_of_memory_at_one_image_is_one_line_and_other_errors_pass_through(tiny, monkeypatch):
    def full_gpu(self, prompt, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory.\nlong allocator report")

    monkeypatch.setattr(type(tiny), "__call__", full_gpu)
    with pytest.raises(EditflowError, match="out of memory on cpu even for one image at a time") as exc:
        generate(tiny, ["a star"] * 3, [0, 1, 2], GenerationConfig(steps=1))
    assert "\n" not in str(exc.value)
    monkeypatch.setattr(type(tiny), "__call__", lambda self, prompt, **kw: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="^bug$"):
        generate(tiny, ["a star"], [0], GenerationConfig(steps=1))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 9.00 GB)"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def _fake_pipe(sample_size: int, scale: int = 8):
    calls = []
    vae = types.SimpleNamespace(enable_slicing=lambda: calls.append("slicing"),
                                enable_tiling=lambda: calls.append("tiling"))
    unet = types.SimpleNamespace(config=types.SimpleNamespace(sample_size=sample_size))
    return types.SimpleNamespace(vae=vae, unet=unet, vae_scale_factor=scale), calls


@pytest.mark.parametrize("sample_size, batch, want", [
    (4, 64, []),  # the embedded model: 32 px
    (64, 4, []),  # SD 1.5, a few images
    (64, 8, ["slicing"]),  # SD 1.5, a batch of 8 at 512 px
    (128, 1, ["slicing", "tiling"]),  # SDXL: 1024 px
])
def test_vae_slicing_and_tiling_only_for_large_images(sample_size, batch, want):
    pipe, calls = _fake_pipe(sample_size)
    memory_savers(pipe, batch)
    assert calls == want


def test_offload_goes_through_diffusers_and_is_refused_on_the_cpu():
    calls = []
    pipe = types.SimpleNamespace(enable_model_cpu_offload=lambda device: calls.append(device),
                                 to=lambda device: pytest.fail("an offloaded pipeline is not moved whole"))
    assert place(pipe, "cuda", offload=True) is pipe and calls == ["cuda"]
    with pytest.raises(EditflowError, match="needs --device cuda"):
        check_offload(torch.device("cpu"))


# -- jobs, flows, policies ----------------------------------------------------------------------


def test_jobs_carry_device_and_dtype_as_json():
    erase = EraseJob(["star"], device="cuda:1", dtype="bfloat16", offload=True)
    assert EraseJob(**json.loads(json.dumps(asdict(erase)))) == erase
    evaluation = EvalJob(patch="p.safetensors", device="cpu", dtype="bfloat16")
    assert EvalJob(**json.loads(json.dumps(asdict(evaluation)))) == evaluation
    assert (EraseJob(["star"]).device, EvalJob().dtype) == (None, None)  # None: the environment's, else auto
    with pytest.raises(TypeError):  # beyond the concepts and the method, settings go by name
        EraseJob(["star"], "ace", "some/model")
    with pytest.raises(TypeError):
        EvalJob("p.safetensors")


def test_shard_workers_load_the_model_with_the_jobs_placement():
    from editflow.evaluation.generation import ModelShardRunner, _loaded

    shard_runner = pickle.loads(pickle.dumps(ModelShardRunner(None, None, GenerationConfig(), "cpu", "bfloat16")))
    assert (shard_runner.device, shard_runner.dtype, shard_runner.offload) == ("cpu", "bfloat16", False)
    try:
        pipe = _loaded(None, None, "cpu", "bfloat16")
        assert pipe.unet.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    finally:
        _loaded.cache_clear()


def test_policies_name_a_device_and_dtype_checked_at_load(no_cuda):
    from flows.policy import KEYS, Policy

    assert {"device", "dtype"} <= KEYS
    policy = Policy.from_dict({"name": "p", "concepts": ["star"], "dtype": "bfloat16", "device": "cuda:1"})
    assert (policy.device, policy.dtype) == ("cuda:1", "bfloat16")  # names only: no CUDA needed to load it
    job = policy.job(["star"])
    assert (job.device, job.dtype) == ("cuda:1", "bfloat16")
    assert policy.job(["star"], device="cpu").device == "cpu"  # the command line wins
    for key, bad, message in (("dtype", "half", "unknown dtype 'half'"), ("device", "gpu", "unknown device 'gpu'"),
                              ("dtype", 16, "unknown dtype 16")):
        with pytest.raises(EditflowError, match=message):
            Policy.from_dict({"name": "p", "concepts": ["star"], key: bad})


def test_policy_run_refuses_a_missing_device_from_the_policy_file(no_cuda):
    out, policy = no_cuda
    policy.write_text("name: p\nconcepts: [star]\ndevice: cuda\n")
    res = runner.invoke(app, ["policy", "run", str(policy)])
    assert res.exit_code == 1 and "no usable CUDA" in _one_error_line(res)
    res = runner.invoke(app, ["policy", "run", str(policy), "--dtype", "bogus"])
    assert res.exit_code == 2


# -- the registry's pyfunc model ------------------------------------------------------------------


def _tiny_patch(pipe, path):
    """A rank-1 ungated patch on the embedded model's targets (no erasure: just something to apply)."""
    from editflow.edits.closed_form import LowRankEdit
    from editflow.edits.patch import Patch, base_identity
    from editflow.edits.targets import TargetSpec

    modules = TargetSpec().find(pipe.unet)
    g = torch.Generator().manual_seed(0)
    down = 0.1 * torch.randn(1, next(iter(modules.values())).weight.shape[1], generator=g)
    up = {n: 0.1 * torch.randn(m.weight.shape[0], 1, generator=g) for n, m in modules.items()}
    return Patch(LowRankEdit(up, down), None, {"method": "test", **base_identity(pipe.unet, TargetSpec())}).save(path)


def test_pyfunc_predict_moves_to_the_dtype_its_params_name(embedded_pipe, tmp_path, monkeypatch):
    """needs bf16 patches: the float32-computed patch applies to the bfloat16 reload."""
    from mlflow.models.utils import _enforce_params_schema

    from registry.pyfunc_model import PatchedPipeline
    from registry.register import SIGNATURE

    monkeypatch.delenv("EDITFLOW_DTYPE", raising=False)
    context = types.SimpleNamespace(model_config={"base": "embedded", "device": "cpu"},
                                    artifacts={"patch": str(_tiny_patch(embedded_pipe, tmp_path / "p.safetensors"))})
    model = PatchedPipeline()
    model.load_context(context)
    assert model.pipe.unet.dtype == torch.float32
    params = lambda **kw: _enforce_params_schema({"seed": 0, "steps": 2, **kw}, SIGNATURE.params)  # noqa: E731
    assert params()["dtype"] is None  # the schema fills device/dtype with None: "as loaded"
    bf16 = model.predict(context, ["a red star"], params(dtype="bfloat16"))
    assert model.pipe.unet.dtype == torch.bfloat16 and model.place.device.type == "cpu"
    assert bf16.shape == (1, 32, 32, 3) and bf16.dtype == np.uint8
    loaded = model.pipe
    assert np.array_equal(model.predict(context, ["a red star"], params()), bf16)  # stays where it is
    assert model.pipe is loaded
    with pytest.raises(EditflowError, match="unknown dtype 'half'"):
        model.predict(context, ["a red star"], params(dtype="half"))
    assert model.pipe is loaded
