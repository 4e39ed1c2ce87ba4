"""``editflow world train``: build the embedded model stage by stage, resumably.

Stages (each one's result is saved under ``work_dir`` so a re-run skips what is done, and a
stage interrupted mid-way resumes from its last checkpoint):

1. ``tokenizer``     -- the world's CLIP BPE vocabulary;
2. ``text_encoder``  -- caption pretraining, then frozen;
3. ``vae``           -- autoencoder on rendered images;
4. ``evaluator``     -- the tiny open_clip judge (independent of the generator; trained before
                        the UNet so it can judge the UNet's checkpoints);
5. ``unet``          -- latent denoising with the frozen text encoder;

then ``export`` writes the diffusers pipeline and evaluator into ``out_dir``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from editflow.models import components as C
from editflow.models.tokenizer import save_tokenizer
from editflow.training import generator as G
from editflow.training.common import Checkpoint
from editflow.training.recipe import Recipe
from editflow.world import WorldSpec

STAGES = ("tokenizer", "text_encoder", "vae", "evaluator", "unet", "export")


def _timed(log: dict, name: str):
    class _T:
        def __enter__(self):
            self.t = time.time()

        def __exit__(self, *exc):
            if exc[0] is None:
                log[name] = round(time.time() - self.t, 1)

    return _T()


def train_embedded(spec: WorldSpec, recipe: Recipe, work_dir: str | Path, out_dir: str | Path,
                   until: str = "export", unet_max_steps: int | None = None) -> dict:
    """Run the stages up to and including ``until``; returns seconds per stage run now."""
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; valid: {', '.join(STAGES)}")
    last = STAGES.index(until)
    work, out = Path(work_dir), Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    for ckpt in sorted(work.glob("*.ckpt")):  # weights-only: refuse a planted or foreign file before any stage
        Checkpoint(ckpt).read()
    arch = recipe.architecture
    timings: dict[str, float] = {}
    torch.manual_seed(recipe.seed)

    tok_dir = work / "tokenizer"
    if not (tok_dir / "vocab.json").exists():
        save_tokenizer(spec.vocabulary(), tok_dir, arch.max_length)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    if last < 1:
        return timings

    te_dir = work / "text_encoder"
    if (te_dir / "config.json").exists():
        text_encoder = CLIPTextModel.from_pretrained(te_dir)
    else:
        with _timed(timings, "text_encoder"):
            text_encoder = G.train_text_encoder(spec, tokenizer, C.build_text_encoder(arch, tokenizer),
                                                recipe, work)
        text_encoder.save_pretrained(te_dir)
    text_encoder.eval().requires_grad_(False)
    if last < 2:
        return timings

    with _timed(timings, "render"):
        scenes, images = G.render_dataset(spec, recipe.dataset_size, recipe.seed, work / "images.npy")
    vae_dir = work / "vae"
    if (vae_dir / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(vae_dir)
    else:
        with _timed(timings, "vae"):
            vae = G.train_vae(images, C.build_vae(arch), recipe, work)
            G.calibrate_scaling(images[:4096], vae)
        vae.save_pretrained(vae_dir)
    vae.eval().requires_grad_(False)
    if last < 3:
        return timings

    if not (work / "evaluator" / "done").exists():
        from editflow.training.evaluator import train_evaluator

        with _timed(timings, "evaluator"):
            train_evaluator(spec, recipe, tokenizer, work)
    if last < 4:
        return timings

    unet_dir = work / "unet"
    if not (unet_dir / "config.json").exists():
        cache = work / "latents.pt"
        if cache.exists():
            latents = torch.load(cache, weights_only=True)
        else:
            with _timed(timings, "latents"):
                latents = G.encode_latents(images, vae)
            torch.save(latents, cache)
        unet = C.build_unet(arch)
        with _timed(timings, "unet"):
            ema = G.train_unet(spec, scenes, latents, tokenizer, text_encoder, unet,
                               C.build_train_scheduler(arch), recipe, work, max_steps=unet_max_steps)
        done = (work / "unet.ckpt").exists() and _unet_step(work) >= recipe.unet.steps
        ema.copy_to(unet.parameters())
        target = unet_dir if done else work / "unet_partial"
        unet.save_pretrained(target)
        if not done:
            return timings
    unet = UNet2DConditionModel.from_pretrained(unet_dir)
    if last < 5:
        return timings

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=C.build_sample_scheduler(arch), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(tmp)
    _load_as_float32(tmp / "text_encoder" / "config.json")
    shutil.rmtree(out / "pipeline", ignore_errors=True)
    tmp.rename(out / "pipeline")
    shutil.rmtree(out / "evaluator", ignore_errors=True)
    shutil.copytree(work / "evaluator", out / "evaluator", ignore=shutil.ignore_patterns("*.ckpt", "done"))
    (out / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    return timings


def _load_as_float32(config: Path) -> None:
    """Stored in float16, loaded in float32 as diffusers loads the UNet and VAE: transformers
    follows a config's ``dtype``, so a float16 entry gives a half text encoder beside a float32
    UNet in a plain ``DiffusionPipeline.from_pretrained(folder)`` (dtype mismatch at the first image)."""
    data = json.loads(config.read_text())
    data["dtype"] = "float32"
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _unet_step(work: Path) -> int:
    return Checkpoint(work / "unet.ckpt").step()

