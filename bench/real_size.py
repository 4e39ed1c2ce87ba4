"""Real-size SD 1.5 and SDXL (random weights): seconds and peak memory of each stage of an erasure
and of one sampler step, per dtype, side by side, and what the default evaluation would cost.

    python bench/real_size.py [--arch sd15 sdxl] [--width 1] [--dtypes float32 bfloat16] [--device auto]
    python bench/real_size.py --quick                  # smoke run: --width 0.1, 2-layer text encoders, 128 px
    python bench/real_size.py --width 0.25 --arch sd15 --dtypes float32   # same code as full size, smaller

Random weights cost the same compute as real ones: the pipelines are built from the published
configurations (:mod:`editflow.models.reference`). Stages, each timed on its own:

* ``build``  -- instantiate the pipeline with random weights in the dtype (not a checkpoint load);
* ``encode`` -- text encoding of the erase set's expansion prompts, as ``editflow erase --concept
  naked --method ace --model M`` runs it (:func:`editflow.jobs.erase.run_erase` on the request
  :func:`~editflow.jobs.erase.build_request` makes for a non-embedded model: nudity's six words
  (:mod:`editflow.families`) in 5 templates, each with its target prompt, 77 tokens); the part of
  ``run_erase`` up to its last
  encoding progress report;
* ``solve``  -- the rest of ``run_erase``: float64 closed form, gate calibration, base-model hash;
* ``write``  -- ``Patch.save``;
* ``step``   -- one sampler step: the UNet on the uncond/cond pair (batch 2, classifier-free
  guidance) at native resolution (512 px SD 1.5, 1024 px SDXL), plus the scheduler step;
* ``decode`` -- the VAE decoding one image at that resolution;
* ``eval``   -- extrapolated, not run: the default evaluation of a nudity erasure (the shipped
  suite at :class:`editflow.jobs.evaluate.EvalJob`'s defaults and the checkpoint's own sampler
  settings) in measured step and decode times; see
  :func:`eval_cost`. No peak: the evaluation draws 64 images a batch and the attack
  backpropagates, which a batch-2 step does not show.

Each (architecture, dtype) runs in a fresh subprocess, so memory peaks are its own. Peak memory:
on CUDA ``torch.cuda.max_memory_allocated`` per stage; on the CPU the process's peak resident
set during the stage (``VmHWM``, reset through ``/proc/self/clear_refs`` before each stage, after
``malloc_trim``; where that is missing, RSS sampled every 5 ms with psutil). It includes the model.
The dtypes default to float32 and bfloat16, plus float16 on CUDA. Prints one markdown table (with
the ratio of each dtype to float32 beside it) and one JSON line; results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import torch

STAGES = ("build", "encode", "solve", "write", "step", "decode")
NATIVE_SIZE = {"sd15": 512, "sd21": 768, "sdxl": 1024}
CONCEPT = "naked"
PROMPT = "a photo of a naked person on a beach"
RESULT = "RESULT "  # prefix of the worker's JSON line


# -- memory -------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def _rss_bytes() -> float:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024.0
    import psutil  # where /proc is missing

    return float(psutil.Process().memory_info().rss)


class Peak:
    """Peak memory (GB) while the block runs, in ``result``: ``peak_gb`` (the device's on CUDA, else
    the host's), ``host_peak_gb`` (the process's peak resident set, model included) and
    ``growth_gb`` (host peak over the start). ``split()`` returns the peaks so far and starts anew."""

    def __init__(self, device: torch.device):
        self.device, self._thread, self._stop = device, None, threading.Event()

    def __enter__(self):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed pages back to the OS: the base is live memory
        self._start()
        return self

    def _start(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.base = self._top = _rss_bytes()
        self._hwm = _reset_hwm()
        if not self._hwm and self._thread is None:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()

    def _watch(self):
        while not self._stop.wait(0.005):
            self._top = max(self._top, _rss_bytes())

    def _read(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        top = _status_kb("VmHWM") * 1024.0 if self._hwm else max(self._top, _rss_bytes())
        device = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else top
        return {"peak_gb": device / 2**30, "host_peak_gb": top / 2**30, "growth_gb": (top - self.base) / 2**30}

    def split(self) -> dict:
        out = self._read()
        self._start()
        return out

    def __exit__(self, *exc):
        self.result = self._read()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


# -- the stages (one architecture, one dtype) ---------------------------------------------------


def erase_job(arch: str):
    """The job ``editflow erase --concept naked --method ace --model M`` runs (CLI defaults)."""
    from editflow.jobs.erase import EraseJob

    return EraseJob([CONCEPT], "ace", model=f"random-{arch}")


def sampler_step(pipe, size: int, guidance: float, seed: int = 0):
    """A closure running one classifier-free-guided sampler step at ``size`` px (batch 2), and the
    latents it steps (for the decode stage)."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    with torch.no_grad():
        if sdxl:
            cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(
                prompt=PROMPT, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
                negative_prompt="")
            time_ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype)
            extra = {"added_cond_kwargs": {"text_embeds": torch.cat([pooled_uncond, pooled]), "time_ids": time_ids}}
        else:
            cond, uncond = pipe.encode_prompt(prompt=PROMPT, device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=True, negative_prompt="")
            extra = {}
    context = torch.cat([uncond, cond]).to(dtype)
    scale = pipe.vae_scale_factor
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, pipe.unet.config.in_channels, size // scale, size // scale, generator=gen)
    latents = latents.to(device, dtype) * pipe.scheduler.init_noise_sigma
    pipe.scheduler.set_timesteps(25, device=device)
    t = pipe.scheduler.timesteps[0]

    def step():
        pipe.scheduler.set_timesteps(25, device=device)  # the same first step each time (PNDM keeps state)
        with torch.no_grad():
            x = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            eps_uncond, eps_cond = pipe.unet(x, t, encoder_hidden_states=context, **extra).sample.chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            return pipe.scheduler.step(eps, t, latents).prev_sample

    return step, latents


def decode(pipe, latents):
    with torch.no_grad():
        return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample


def eval_cost(steps_s: float, decode_s: float, trainable: bool, pipe) -> dict:
    """The default evaluation of a real nudity erasure, in measured step times.

    From :class:`~editflow.jobs.evaluate.EvalJob`'s defaults and the shipped suite
    (:func:`~editflow.evaluation.suite.suite_prompt_set`: ``images`` target prompts, the leakage
    prompts, the 238 everyday captions), each drawn by the original and the patched model (first
    evaluation on a base: the original's images are cached after) at the checkpoint's own steps
    and guidance (:func:`~editflow.jobs.evaluate.sampling`), with one decode each. The
    concept-inversion attack (SD 1.x/2.x only; SDXL reports it absent) runs ``attack_restarts`` x
    ``attack_steps`` inversion steps at the inversion batch, each a forward and an input-gradient
    backward through the frozen UNet (estimated as 2 forwards: no weight gradients), then draws
    every target prompt with each try's token and once with the untrained token. Detection and
    CLIP scoring (one evaluator pass per image) are not counted.
    """
    from editflow.evaluation.attack import AttackConfig
    from editflow.evaluation.suite import suite_prompt_set
    from editflow.jobs.evaluate import EvalJob, sampling

    job = EvalJob()
    n_steps, guidance = sampling(pipe, job, real=True)
    roles = Counter(p.role for p in suite_prompt_set(["nudity"], "nudity", images=job.images).prompts)
    per_image = n_steps * steps_s + decode_s
    images = 2 * sum(roles.values())
    out = {"images": images, "steps": n_steps, "guidance": guidance, "target_images": roles["target"],
           "leakage_images": roles["leakage"], "preserved_images": roles["neighbour"],
           "generation_s": images * per_image}
    if job.attack and trainable:
        batch = AttackConfig().inversion.batch
        inversions = job.attack_restarts * job.attack_steps
        inversion_s = inversions * (batch / 2) * 2 * steps_s  # batch b vs the step's 2; forward + backward
        drawn = (job.attack_restarts + 1) * job.images
        out.update(attack_inversion_steps=inversions, attack_batch=batch, attack_inversion_s=inversion_s,
                   attack_images=drawn, attack_drawing_s=drawn * per_image)
    else:
        out.update(attack_inversion_steps=0, attack_inversion_s=0.0, attack_images=0, attack_drawing_s=0.0)
    out["total_s"] = out["generation_s"] + out["attack_inversion_s"] + out["attack_drawing_s"]
    return out


def measure(arch: str, dtype_name: str, args) -> dict:
    """Every stage for one architecture and dtype, in this process."""
    from transformers import CLIPTokenizer

    from editflow.jobs.erase import build_request, run_erase
    from editflow.models.device import Placement
    from editflow.models.diffusion import check_trainable
    from editflow.models.pipeline import embedded_dir
    from editflow.models.reference import build_pipeline

    place = Placement.resolve(args.device, dtype_name)
    device, dtype = place.device, place.dtype
    size = args.size or NATIVE_SIZE[arch]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    tok = CLIPTokenizer.from_pretrained(Path(embedded_dir()) / "pipeline" / "tokenizer")
    stages: dict[str, dict] = {}

    def record(name: str, seconds: float, mem: dict, **extra):
        stages[name] = {"seconds": seconds, **mem, **extra}

    with Peak(device) as mem:
        t = time.perf_counter()
        pipe = build_pipeline(arch, tok, width=args.width, text_layers=args.text_layers, dtype=dtype).to(device)
        sync()
        seconds = time.perf_counter() - t
    record("build", seconds, mem.result)
    n_params = sum(p.numel() for p in pipe.unet.parameters())

    job = erase_job(arch)
    request = build_request(job)
    prompts = 2 * len(request.templates) * sum(len(c.words) for c in request.concepts)  # prompts + targets
    encoded: dict = {"at": None, "peak": {}}

    def encoding_done(n: int) -> None:  # run_erase's progress, after each encoded batch
        sync()
        encoded["at"] = time.perf_counter()
        split = mem.split()
        encoded["peak"] = {k: max(v, encoded["peak"].get(k, v)) for k, v in split.items()}

    try:
        with Peak(device) as mem:
            t0 = time.perf_counter()
            patch, _ = run_erase(job, pipe, progress=encoding_done, request=request)
            sync()
            t1 = time.perf_counter()
        if encoded["at"] is None:
            raise RuntimeError("run_erase reported no encoded batch")
        record("encode", encoded["at"] - t0, encoded["peak"], prompts=prompts,
               tokens=pipe.tokenizer.model_max_length)
        record("solve", t1 - encoded["at"], mem.result, rank=patch.edit.rank, gated=patch.gate is not None)
        with tempfile.TemporaryDirectory() as d:
            with Peak(device) as mem:
                t = time.perf_counter()
                path = patch.save(Path(d) / f"{CONCEPT}.safetensors")
                seconds = time.perf_counter() - t
            record("write", seconds, mem.result, bytes=path.stat().st_size)
        del patch
    except Exception as exc:  # noqa: BLE001 -- reported in the table; the sampler stages still run
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
        for name in ("encode", "solve", "write"):
            stages.setdefault(name, {"error": why})

    step, latents = sampler_step(pipe, size, args.guidance)
    for _ in range(args.warmup):
        step()
    times = []
    with Peak(device) as mem:
        for _ in range(args.repeats):
            sync()
            t = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t)
    record("step", min(times), mem.result, batch=2, size=size, latent=list(latents.shape[-2:]))
    for _ in range(args.warmup):
        decode(pipe, latents)
    times = []
    with Peak(device) as mem:
        for _ in range(args.repeats):
            sync()
            t = time.perf_counter()
            decode(pipe, latents)
            sync()
            times.append(time.perf_counter() - t)
    record("decode", min(times), mem.result, size=size)

    try:
        check_trainable(pipe)
        trainable = True
    except Exception:  # an SDXL UNet: the evaluation reports the attack absent
        trainable = False
    cost = eval_cost(stages["step"]["seconds"], stages["decode"]["seconds"], trainable, pipe)
    return {"arch": arch, "dtype": dtype_name, "device": str(device), "width": args.width,
            "text_layers": args.text_layers, "size": size, "threads": torch.get_num_threads(),
            "unet_parameters": n_params, "stages": stages, "eval": cost}


# -- orchestration ------------------------------------------------------------------------------


def worker_argv(args, arch: str, dtype: str) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", "--arch", arch, "--dtypes", dtype,
            "--width", str(args.width), "--device", args.device, "--threads", str(args.threads),
            "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--guidance", str(args.guidance)]
    if args.text_layers:
        argv += ["--text-layers", str(args.text_layers)]
    if args.size:
        argv += ["--size", str(args.size)]
    return argv


def run_one(args, arch: str, dtype: str) -> dict:
    """One configuration in a fresh subprocess (clean peaks, memory handed back after)."""
    t = time.perf_counter()
    proc = subprocess.run(worker_argv(args, arch, dtype), stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        why = f"exit {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode in (-9, 137) else "")
        return {"arch": arch, "dtype": dtype, "error": why, "seconds": time.perf_counter() - t}
    return json.loads(lines[-1][len(RESULT):])


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _seconds(s: float) -> str:
    return f"{s:.3g}" if s < 100 else f"{s:.0f}" if s < 600 else f"{s:.0f} ({s / 3600:.1f} h)"


def _row(r: dict, stage: str) -> tuple[float | None, float | None, str | None]:
    """(seconds, peak GB, error) of one stage of one result."""
    if stage == "eval":  # no peak: the evaluation generates 64 images a batch and the attack backpropagates
        return r["eval"]["total_s"], None, None
    st = r["stages"][stage]
    return st.get("seconds"), st.get("peak_gb"), st.get("error")


def table(results: list[dict]) -> str:
    """stage x arch x dtype: seconds, peak GB, and each against the same arch's float32."""
    rows = ["| stage | arch | dtype | seconds | peak GB | s vs float32 | peak vs float32 |",
            "|---|---|---|---:|---:|---:|---:|"]
    base = {r["arch"]: r for r in results if r["dtype"] == "float32" and "error" not in r}
    for stage in (*STAGES, "eval"):
        for r in results:
            if "error" in r:
                if stage == STAGES[0]:
                    rows.append(f"| all | {r['arch']} | {r['dtype']} | error: {r['error']} | - | - | - |")
                continue
            name = "eval (extrapolated)" if stage == "eval" else stage
            s, peak, error = _row(r, stage)
            if error:
                rows.append(f"| {name} | {r['arch']} | {r['dtype']} | error: {error} | - | - | - |")
                continue
            s0, p0, _ = _row(base[r["arch"]], stage) if r["arch"] in base else (None, None, None)
            ratio_s = _fmt(s / s0) + "x" if s0 else "-"
            ratio_p = _fmt(peak / p0) + "x" if p0 and peak else "-"
            cells = [name, r["arch"], r["dtype"], _seconds(s), _fmt(peak), ratio_s, ratio_p]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def explain(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        if "error" in r:
            continue
        e = r["eval"]
        attack = (f"attack {e['attack_inversion_steps']} inversion steps at batch {e['attack_batch']} "
                  f"({_seconds(e['attack_inversion_s'])} s) + {e['attack_images']} images "
                  f"({_seconds(e['attack_drawing_s'])} s)" if e["attack_inversion_steps"]
                  else "no attack (SDXL: closed-form methods only, reported absent)")
        lines.append(f"{r['arch']} {r['dtype']}: UNet {r['unet_parameters'] / 1e6:.0f} M, {r['size']} px; eval = "
                     f"{e['images']} images x ({e['steps']} steps + decode) ({_seconds(e['generation_s'])} s), "
                     f"{attack}")
    return lines


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["sd15", "sdxl"], choices=sorted(NATIVE_SIZE))
    ap.add_argument("--width", type=float, default=1.0, help="channel scale (1: real size)")
    ap.add_argument("--text-layers", type=int, default=None, help="text encoders' depth (default: real)")
    ap.add_argument("--size", type=int, default=None, help="image size in px (default: native, 512 / 1024)")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: float32 bfloat16, plus float16 on CUDA")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (editflow.models.device)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="timed sampler steps / decodes (the fastest counts)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps first (default: 1 on CUDA or with --quick, else 0)")
    ap.add_argument("--guidance", type=float, default=7.5,
                    help="CFG scale (default 7.5, SD 1.5's own; a step costs the same at any scale)")
    ap.add_argument("--quick", action="store_true", help="smoke run: --width 0.1 --text-layers 2 --size 128")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.width = 0.1 if args.width == 1.0 else args.width
        args.text_layers = args.text_layers or 2
        args.size = args.size or 128
    if not 0 < args.width <= 1 or args.repeats < 1 or (args.size is not None and args.size % 64):
        ap.error("--width must be in (0, 1], --repeats >= 1, --size a multiple of 64")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    from editflow.models.device import resolve_device

    device = resolve_device(args.device)
    if args.warmup is None:
        args.warmup = 1 if device.type == "cuda" or args.quick else 0
    if args.worker:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
        result = measure(args.arch[0], args.dtypes[0], args)
        print(RESULT + json.dumps(result), flush=True)
        return [result]
    dtypes = args.dtypes or ["float32", "bfloat16", *(["float16"] if device.type == "cuda" else [])]
    print(f"device {device}, {args.threads} threads, width {args.width}, size "
          f"{args.size or 'native'}, text layers {args.text_layers or 'real'}; one subprocess per row group",
          flush=True)
    results = []
    for arch in args.arch:
        for dtype in dtypes:
            t = time.perf_counter()
            results.append(run_one(args, arch, dtype))
            status = results[-1].get("error", "ok")
            print(f"  {arch} {dtype}: {status} ({time.perf_counter() - t:.0f} s)", flush=True)
    print(table(results))
    for line in explain(results):
        print(line)
    print(json.dumps({"bench": "real_size", "device": str(device), "width": args.width, "results": results}))
    if any("error" in r or any("error" in st for st in r["stages"].values()) for r in results):
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
