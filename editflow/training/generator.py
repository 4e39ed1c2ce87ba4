"""Training stages of the embedded generator: text encoder, VAE, UNet.

The recipe follows Stable Diffusion's split (Rombach et al., "High-Resolution Image Synthesis
with Latent Diffusion Models", CVPR 2022): a text encoder trained first and then frozen, an
autoencoder trained for reconstruction, and a latent UNet trained with the denoising loss.
Two changes make conditioning emerge within minutes on a CPU, where a jointly trained
from-scratch encoder did not (see docs/embedded-model.md):

* the text encoder is pretrained on the world's captions to name the scene's concepts
  (a caption-only stand-in for CLIP's contrastive pretraining: synonyms land together);
* v-prediction (Salimans & Ho 2022) with Min-SNR-gamma loss weights (Hang et al. 2023, eq. 7).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.training_utils import EMAModel, compute_snr
from transformers import CLIPTextModel, CLIPTokenizer

from editflow.progress import progress, track
from editflow.training.common import Checkpoint, set_lr
from editflow.training.recipe import Recipe
from editflow.world import FAMILIES, WorldSpec, caption, render, sample_scene
from editflow.world.captions import mentions
from editflow.world.dataset import to_tensor

FAMILY_HEADS = FAMILIES


def _label_index(spec: WorldSpec, family: str) -> dict[str, int]:
    # index 0 = family not named in the caption
    return {c.name: i + 1 for i, c in enumerate(spec.family(family))}


def encode_prompts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    """SD-style conditioning: last hidden state of the padded prompt."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device)).last_hidden_state


def train_text_encoder(spec: WorldSpec, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel,
                       recipe: Recipe, work_dir: Path) -> CLIPTextModel:
    """Pretrain the text encoder to name each family's concept from the caption.

    Heads on the pooled (end-of-text) state classify every family, "not named" included; the
    heads are discarded afterwards. Captions only, no images: it takes about a minute.
    """
    cfg = recipe.text_encoder
    index = {f: _label_index(spec, f) for f in FAMILY_HEADS}
    heads = torch.nn.ModuleDict({f: torch.nn.Linear(text_encoder.config.hidden_size, len(ix) + 1)
                                 for f, ix in index.items()})
    params = [*text_encoder.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    rng, gen = random.Random(recipe.seed + 1), torch.Generator().manual_seed(recipe.seed + 1)
    ckpt = Checkpoint(work_dir / "text_encoder.ckpt")
    start = ckpt.load(rng, gen, model=text_encoder, heads=heads, opt=opt) if ckpt.exists() else 0
    text_encoder.train()
    bar = progress(cfg.steps, "text encoder", initial=start)
    for step in range(start, cfg.steps):
        set_lr(opt, cfg.lr, step, cfg.steps, cfg.warmup)
        texts = [caption(sample_scene(rng, spec), rng, spec) if rng.random() > 0.05 else ""
                 for _ in range(cfg.batch)]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        pooled = text_encoder(ids).pooler_output
        named = [mentions(t, spec) for t in texts]
        loss = sum(F.cross_entropy(heads[f](pooled),
                                   torch.tensor([index[f].get(m.get(f, ""), 0) for m in named]))
                   for f in FAMILY_HEADS)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.checkpoint_every == 0:
            ckpt.save(step + 1, rng, gen, model=text_encoder, heads=heads, opt=opt)
    bar.close()
    text_encoder.eval().requires_grad_(False)
    return text_encoder


def render_dataset(spec: WorldSpec, n: int, seed: int, cache: Path) -> tuple[list, np.ndarray]:
    """Scenes and uint8 images (N, H, W, 3) of the training set, cached on disk."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, spec) for _ in range(n)]
    if cache.exists():
        images = np.load(cache)
        if len(images) == n:
            return scenes, images
    images = np.stack([np.asarray(render(s, spec)) for s in track(scenes, "render world")])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, images)
    return scenes, images


def train_vae(images: np.ndarray, vae: AutoencoderKL, recipe: Recipe, work_dir: Path) -> AutoencoderKL:
    """Reconstruction (L1 + L2) with a small KL term, as SD's autoencoder without the GAN."""
    cfg = recipe.vae
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr)
    rng, gen = random.Random(recipe.seed + 2), torch.Generator().manual_seed(recipe.seed + 2)
    ckpt = Checkpoint(work_dir / "vae.ckpt")
    start = ckpt.load(rng, gen, model=vae, opt=opt) if ckpt.exists() else 0
    vae.train()
    bar = progress(cfg.steps, "vae", initial=start)
    for step in range(start, cfg.steps):
        set_lr(opt, cfg.lr, step, cfg.steps, cfg.warmup)
        idx = torch.randint(len(images), (cfg.batch,), generator=gen).numpy()
        x = to_tensor(images[idx])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0:
            ckpt.save(step + 1, rng, gen, model=vae, opt=opt)
    bar.close()
    vae.eval().requires_grad_(False)
    return vae


@torch.no_grad()
def _posterior_means(images: np.ndarray, vae: AutoencoderKL, batch: int = 512) -> torch.Tensor:
    return torch.cat([vae.encode(to_tensor(images[i:i + batch])).latent_dist.mean
                      for i in range(0, len(images), batch)])


def calibrate_scaling(images: np.ndarray, vae: AutoencoderKL) -> float:
    """Set ``vae.config.scaling_factor`` to 1/std of the latents, as SD did (0.18215)."""
    factor = float(1.0 / _posterior_means(images, vae).std())
    vae.register_to_config(scaling_factor=factor)
    return factor


def encode_latents(images: np.ndarray, vae: AutoencoderKL) -> torch.Tensor:
    """Scaled posterior means of the whole training set (what the UNet learns to denoise)."""
    return _posterior_means(images, vae) * vae.config.scaling_factor


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023): min(SNR, gamma) / (SNR + 1) for v-prediction,
    min(SNR, gamma) / SNR for epsilon; SNR from diffusers' ``compute_snr``."""
    snr = compute_snr(scheduler, t)
    w = torch.clamp(snr, max=gamma)
    return w / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else w / snr


def train_unet(spec: WorldSpec, scenes: list, latents: torch.Tensor, tokenizer: CLIPTokenizer,
               text_encoder: CLIPTextModel, unet: UNet2DConditionModel, scheduler, recipe: Recipe,
               work_dir: Path, max_steps: int | None = None) -> EMAModel:
    """Denoising training of the UNet on cached latents; captions are re-worded every step.

    Returns the EMA of the weights (what is shipped). ``max_steps`` stops early (the state is
    checkpointed, so a later call resumes).
    """
    cfg = recipe.unet
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    ema = EMAModel(unet.parameters(), decay=recipe.ema_decay, use_ema_warmup=True, power=0.75)
    rng, gen = random.Random(recipe.seed + 3), torch.Generator().manual_seed(recipe.seed + 3)
    ckpt = Checkpoint(work_dir / "unet.ckpt")
    start = ckpt.load(rng, gen, model=unet, ema=ema, opt=opt) if ckpt.exists() else 0
    stop = cfg.steps if max_steps is None else min(cfg.steps, start + max_steps)
    unet.train()
    text_encoder.eval()
    bar = progress(cfg.steps, "unet", initial=start)
    step = start
    for step in range(start, stop):
        set_lr(opt, cfg.lr, step, cfg.steps, cfg.warmup)
        idx = torch.randint(len(latents), (cfg.batch,), generator=gen)
        texts = ["" if rng.random() < recipe.cfg_dropout else caption(scenes[i], rng, spec)
                 for i in idx.tolist()]
        with torch.no_grad():
            cond = encode_prompts(tokenizer, text_encoder, texts)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        xt = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
        pred = unet(xt, t, cond).sample
        per = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        loss = (per * min_snr_weights(scheduler, t, recipe.min_snr_gamma)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == stop:
            ckpt.save(step + 1, rng, gen, model=unet, ema=ema, opt=opt)
    bar.close()
    return ema
