"""Loading text-to-image pipelines (embedded default, local folders, user-given hub ids) and
generating seeded image batches with them.

The embedded model is a plain diffusers ``StableDiffusionPipeline`` folder, so the code that
serves it serves real SD 1.x/2.x/SDXL checkpoints too.

Where a pipeline runs is the caller's choice (``device``, ``dtype``: see
:mod:`editflow.models.device`; ``offload``: diffusers' model CPU offload). Generation keeps its
random generators on the CPU, so a seeded image is the same noise on any device; it halves the
batch when the accelerator runs out of memory, and decodes latents one image (or one tile) at a
time when the images are large.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from editflow.errors import EditflowError
from editflow.models.device import check_offload

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "embedded"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TILE_SIZE = 1024  # images this wide or tall are decoded tile by tile (VAE tiling)
SLICE_PIXELS = 8 * 512 * 512  # a batch with this many pixels is decoded one image at a time (VAE slicing)
log = logging.getLogger(__name__)


def embedded_dir() -> Path:
    """Folder of the shipped embedded model (``pipeline/`` and ``evaluator/``)."""
    return ASSETS


def load_pipeline(model: str | Path | None = None, *, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, offload: bool = False,
                  allow_download: bool = False) -> DiffusionPipeline:
    """Load a diffusers text-to-image pipeline onto ``device`` in ``dtype``.

    ``model`` is ``None`` (the embedded model), a local diffusers folder, or a hub id. A hub id
    is resolved from the local Hugging Face cache only, unless ``allow_download`` is set.
    ``offload``: diffusers' ``enable_model_cpu_offload`` (accelerate): the models stay on the CPU
    and each moves to ``device`` (an accelerator) only while it runs; slower, far less GPU memory.
    """
    if offload:
        check_offload(device)
    if model is None:
        path = embedded_dir() / "pipeline"
        if not (path / "model_index.json").is_file():
            raise EditflowError(f"embedded model weights are missing at {path}; run `editflow world train`")
        return _from_pretrained(str(path), device, dtype, offload, local_only=True)
    model = str(model)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise EditflowError(f"{model} is not a diffusers pipeline folder (no model_index.json)")
        return _from_pretrained(str(path), device, dtype, offload, local_only=True)
    if model.startswith("models:/"):
        raise EditflowError(f"registry model URIs ({model}) need the registry; not available yet")
    if not HUB_ID.match(model):
        raise EditflowError(f"model not found: {model} (not a folder, not a hub id)")
    try:
        return _from_pretrained(model, device, dtype, offload, local_only=not allow_download)
    except OSError as exc:
        hint = "" if allow_download else " (only the local cache is used; pass --allow-download to fetch it)"
        raise EditflowError(f"cannot load {model}{hint}: {str(exc).splitlines()[0]}") from None


def _from_pretrained(source: str, device, dtype, offload: bool, local_only: bool) -> DiffusionPipeline:
    kwargs: dict = {"local_files_only": local_only, "dtype": dtype}
    index = Path(source) / "model_index.json"
    if index.is_file():
        components = json.loads(index.read_text())
        # SD 1.x/2.x folders list a safety checker; the embedded one stores it as null.
        for name in ("safety_checker", "feature_extractor", "image_encoder"):
            if name in components:
                kwargs[name] = None
        if "requires_safety_checker" in components:
            kwargs["requires_safety_checker"] = False
    pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return place(pipe, device, offload)


def place(pipe: DiffusionPipeline, device: str | torch.device, offload: bool = False) -> DiffusionPipeline:
    """Move ``pipe`` to ``device``, or with ``offload`` let accelerate move each model there while it runs."""
    if offload:
        check_offload(device)
        pipe.enable_model_cpu_offload(device=device)
        return pipe
    return pipe.to(device)


@dataclass
class GenerationConfig:
    """Sampling settings; defaults are those the embedded model's fidelity is measured with."""

    steps: int = 25
    guidance: float = 5.0
    batch: int = 64


def generate(pipe: DiffusionPipeline, prompts: list[str], seeds: list[int],
             config: GenerationConfig | None = None, progress=None) -> list[Image.Image]:
    """One image per (prompt, seed) pair, batched; each image has its own seeded generator (on the
    CPU), so an image depends only on its prompt and seed, not on the batch it was drawn in.

    When the accelerator runs out of memory the batch is halved and the chunk drawn again (said
    once, as a warning on the ``editflow.models.pipeline`` logger), down to one image at a time;
    the batch that fitted is remembered on the pipeline (``editflow_batch_limit``) for later calls.
    Large images turn on the VAE's slicing and tiling (:func:`memory_savers`).

    Calls on one pipeline from several threads (a Dask worker's threads sharing its cached model)
    take turns: a diffusers pipeline keeps its scheduler's step state on itself, and two samplers
    stepping it at once draw different images."""
    with _pipeline_lock(pipe):
        return _generate(pipe, prompts, seeds, config, progress)


def _pipeline_lock(pipe) -> threading.Lock:
    """The pipeline's own lock, made once on the pipeline object (``dict.setdefault`` is atomic, so two
    threads asking at once get the same one)."""
    return vars(pipe).setdefault("editflow_lock", threading.Lock())


def _generate(pipe: DiffusionPipeline, prompts: list[str], seeds: list[int], config: GenerationConfig | None,
              progress) -> list[Image.Image]:
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have the same length")
    if any(not isinstance(p, str) for p in prompts):
        raise EditflowError("prompts must be text")
    if any(not p.strip() for p in prompts):
        raise EditflowError("empty prompt")
    for p in prompts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: undecodable bytes kept from argv or a file name
            raise EditflowError(f"prompt {ascii(p)} is not valid UTF-8 text") from None
    config = config or GenerationConfig()
    if config.steps < 1 or config.batch < 1 or not math.isfinite(config.guidance):
        raise EditflowError(f"sampler settings out of range: steps {config.steps}, batch {config.batch}, "
                            f"guidance {config.guidance}")
    batch = min(config.batch, getattr(pipe, "editflow_batch_limit", config.batch))
    memory_savers(pipe, batch)
    out: list[Image.Image] = []
    while len(out) < len(prompts):
        i = len(out)
        chunk, chunk_seeds = prompts[i:i + batch], seeds[i:i + batch]
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in chunk_seeds]
        try:
            with torch.no_grad():
                images = pipe(chunk, num_inference_steps=config.steps, guidance_scale=config.guidance,
                              generator=gens, output_type="pil").images
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one
            if not is_out_of_memory(exc):
                raise
            images = None  # handled below, once the exception (and the batch's tensors) are let go
        if images is None:
            where = getattr(pipe, "_execution_device", pipe.device)
            _free_accelerator_memory()
            if len(chunk) == 1:
                raise EditflowError(f"out of memory on {where} even for one image at a time; try --offload, "
                                    "--dtype float16 or --device cpu")
            if not hasattr(pipe, "editflow_batch_limit"):
                log.warning(f"out of memory on {where} at batch {len(chunk)}: drawing smaller batches")
            batch = len(chunk) // 2
            pipe.editflow_batch_limit = batch
            continue
        out.extend(images)
        if progress is not None:
            progress(len(chunk))
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, or MPS's out-of-memory ``RuntimeError``."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "MPS backend out of memory" in str(exc))


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    torch.cuda.empty_cache()  # a no-op where CUDA was never initialised
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def memory_savers(pipe: DiffusionPipeline, batch: int) -> None:
    """Decode latents one image at a time (VAE slicing) when a batch holds many pixels
    (:data:`SLICE_PIXELS`), and one image at a time and tile by tile (VAE tiling) when an image is
    :data:`TILE_SIZE` px or larger. Small images are left alone
    (slicing would only slow them; tiling changes the image slightly at the seams)."""
    vae = getattr(pipe, "vae", None)
    unet = getattr(pipe, "unet", None)
    if vae is None or unet is None:
        return
    size = unet.config.sample_size
    size = max(size) if isinstance(size, (list, tuple)) else size
    size *= getattr(pipe, "vae_scale_factor", None) or 1
    large = size >= TILE_SIZE
    if (large or batch * size * size >= SLICE_PIXELS) and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    if large and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()


def make_grid(images: list[Image.Image], cols: int, scale: int = 1) -> Image.Image:
    """Tile images row-major into one picture, optionally upscaled (nearest) for viewing."""
    if not images:
        raise ValueError("no images to tile")
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h))
    for k, im in enumerate(images):
        grid.paste(im, ((k % cols) * w, (k // cols) * h))
    if scale != 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    return grid


def describe(pipe: DiffusionPipeline) -> dict:
    """Architecture summary: class, parameter counts, text dims, cross-attention layers, placement."""
    unet = pipe.unet
    cross = [name for name, m in unet.named_modules()
             if getattr(m, "is_cross_attention", False) and hasattr(m, "to_k")]
    encoders = [getattr(pipe, n) for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    return {
        "pipeline": type(pipe).__name__,
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "cross_attention_dim": unet.config.cross_attention_dim,
        "cross_attention_layers": len(cross),
        "cross_attention_names": cross,
        "text_encoders": [{"class": type(e).__name__, "hidden_size": e.config.hidden_size,
                           "layers": e.config.num_hidden_layers} for e in encoders],
        "latent_channels": unet.config.in_channels,
        "sample_size": unet.config.sample_size,
        "vae_scale_factor": getattr(pipe, "vae_scale_factor", None),
        "image_size": unet.config.sample_size * (getattr(pipe, "vae_scale_factor", None) or 1),
        "scheduler": type(pipe.scheduler).__name__,
        "prediction_type": pipe.scheduler.config.get("prediction_type"),
        "device": str(getattr(pipe, "_execution_device", pipe.device)),
        "dtype": str(unet.dtype).removeprefix("torch."),
    }
