"""The diffusion arithmetic gradient-based edits share (inversion, fine-tuning, ESD).

Everything follows the pipeline's own scheduler config (``prediction_type`` epsilon, v_prediction
or sample; ``alphas_cumprod``), so the same code trains the embedded v-prediction model and SD 1.x
epsilon models. The forward process is diffusers' ``DDPMScheduler`` built from that config
(``add_noise``: ``x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε``, Ho et al. 2020, eq. 4; ``get_velocity``:
``v = √ᾱ_t ε - √(1-ᾱ_t) x0``, Salimans & Ho 2022, §4).

Precision and placement come from the pipeline, never from a global: the frozen models run in
their own dtype (float32, or float16/bfloat16 when loaded so) on their execution device
(:func:`execution_device`), while everything a loss sees is float32: latents
(:func:`to_latents`), the forward process (:func:`add_noise`, :func:`target`), ``x̂0``
(:func:`predicted_x0`) and the UNet's prediction (:func:`unet_output` casts its inputs to the
UNet's dtype and its output back to float32). Trainable tensors (patch factors, LoRA adapters,
learned embeddings) stay float32 "master weights" and are cast where they meet the frozen model.
In float32 every cast here is the identity, so float32 results are bit-for-bit what they were.
Random draws use the caller's CPU generator and move to the device afterwards, so a seed means
the same noise on any device.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler
from PIL import Image

from editflow.errors import EditflowError


def is_trainable(pipe) -> bool:
    """Gradient-based edits call the UNet with text features only (SD 1.x/2.x, the embedded model)."""
    return getattr(pipe.unet.config, "addition_embed_type", None) is None


def check_trainable(pipe) -> None:
    """:func:`is_trainable`, else a one-line error."""
    if not is_trainable(pipe):
        raise EditflowError("fine-tuning and inversion support SD 1.x/2.x-style UNets; this one needs added "
                            f"conditioning ({pipe.unet.config.addition_embed_type}, e.g. SDXL): use a closed-form "
                            "method (ace, uce)")


def image_size(pipe) -> int:
    return pipe.unet.config.sample_size * (getattr(pipe, "vae_scale_factor", None) or 1)


def execution_device(pipe) -> torch.device:
    """Where the pipeline's models run: under CPU offload (diffusers sets ``_offload_device``) diffusers'
    ``_execution_device``, the accelerator, where the modules themselves report the CPU; else the
    UNet's device. Training loops ask once per step: diffusers' answer walks every module of every
    component (~3 ms on the embedded model, 5 % of an inversion step), the UNet's is one lookup.
    editflow places models with ``.to`` or model CPU offload (:func:`~editflow.models.pipeline.place`);
    a pipeline with diffusers' group offloading should be offloaded with those instead."""
    if getattr(pipe, "_offload_device", None) is not None:
        return torch.device(pipe._execution_device)
    unet = getattr(pipe, "unet", None)
    return unet.device if unet is not None else torch.device(pipe.device)


def to_latents(pipe, images: list[Image.Image]) -> torch.Tensor:
    """Scaled latents (posterior means) of ``images``, resized to the model's image size: the VAE
    encodes on its device in its dtype; the latents come back float32 on that device."""
    if not images:
        raise EditflowError("no images to encode")
    size = image_size(pipe)
    arr = np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
                    for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return x
    with torch.no_grad():
        x = x.to(execution_device(pipe), vae.dtype)
        return (vae.encode(x).latent_dist.mean * vae.config.scaling_factor).float()


def _ab(scheduler, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ac = scheduler.alphas_cumprod.to(like.device, torch.float32)[t.to(like.device)]
    shape = (-1,) + (1,) * (like.ndim - 1)
    return ac.sqrt().view(shape).to(like.dtype), (1 - ac).sqrt().view(shape).to(like.dtype)


def prediction_type(scheduler) -> str:
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise EditflowError(f"unsupported prediction type {kind!r}")
    return kind


def noise_scheduler(scheduler) -> DDPMScheduler:
    """The training view (DDPM) of a pipeline's sampling scheduler: the same betas, ``alphas_cumprod``
    and prediction type, with the forward-process methods that sampling schedulers lack or define
    on their own sigmas (DPM-Solver's ``add_noise`` needs ``set_timesteps``)."""
    return scheduler if isinstance(scheduler, DDPMScheduler) else DDPMScheduler.from_config(scheduler.config)


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # diffusers casts ᾱ to the samples' dtype before the square roots; in bfloat16 ᾱ_t near 1
    # rounds to 1 and the noise vanishes at small t, so the forward process runs in float32
    x_t = noise_scheduler(scheduler).add_noise(x0.float(), noise.float(), t.to(x0.device))
    return x_t.to(x0.dtype)


def target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict for ``x_t`` built from ``x0`` and ``noise``."""
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    return noise_scheduler(scheduler).get_velocity(x0.float(), noise.float(), t.to(x0.device)).to(x0.dtype)


def predicted_x0(scheduler, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x̂0`` from a UNet output (FMN's visual denoising loss compares it with the fallback image);
    computed in float32 and returned in ``x_t``'s dtype (ᾱ_t near 1 does not survive bfloat16)."""
    kind = prediction_type(scheduler)
    if kind == "sample":
        return pred
    xf, pf = x_t.float(), pred.float()
    a, s = _ab(scheduler, t, xf)
    if kind == "epsilon":
        return ((xf - s * pf) / a).to(x_t.dtype)
    return (a * xf - s * pf).to(x_t.dtype)


def sample_timesteps(scheduler, n: int, gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """``n`` training timesteps drawn uniformly from ``[low, high)`` of the schedule, on the
    generator's device (the UNet and the forward process move them where they run)."""
    T = scheduler.config.num_train_timesteps
    return torch.randint(int(low * T), max(int(high * T), int(low * T) + 1), (n,), generator=gen,
                         device=gen.device)


def text_features(pipe, prompts: list[str]) -> torch.Tensor:
    """Conditional text features as the pipeline computes them (differentiable: the caller decides
    on ``no_grad``); learned textual-inversion tokens loaded into the pipeline are honoured. In the
    text encoder's dtype, on the execution device."""
    return pipe.encode_prompt(prompt=prompts, device=execution_device(pipe), num_images_per_prompt=1,
                              do_classifier_free_guidance=False)[0]


def unet_output(pipe, x_t: torch.Tensor, t: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The UNet's prediction for ``x_t`` at ``t`` given text ``features``: the inputs are cast to the
    UNet's dtype on its execution device, the prediction comes back float32 (losses are float32;
    gradients flow through both casts)."""
    device, dtype = execution_device(pipe), pipe.unet.dtype
    out = pipe.unet(x_t.to(device, dtype), t.to(device), encoder_hidden_states=features.to(device, dtype)).sample
    return out.float()


class frozen:
    """``with frozen(pipe.unet, pipe.text_encoder):`` no gradient reaches these modules' weights
    (their ``requires_grad`` flags are restored on exit)."""

    def __init__(self, *modules: torch.nn.Module | None):
        self.params = [p for m in modules if m is not None for p in m.parameters()]

    def __enter__(self):
        self.flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        for p, f in zip(self.params, self.flags):
            p.requires_grad_(f)
