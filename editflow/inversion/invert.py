"""Textual inversion (Gal et al., "An Image is Worth One Word", ICLR 2023, eq. 2):

    v* = argmin_v  E_{x0, ε, t} ‖ ε_θ(x_t, c_θ(y(v))) − target ‖²

over the embedding ``v`` of a new token only; the text encoder and the UNet stay frozen.
``target`` is whatever the scheduler predicts (ε, v or x0; :mod:`editflow.models.diffusion`).
With ``patch`` the model being inverted is the patched one: Pham et al. (2023) learn such a token
against an erased model and show it brings the concept back (editflow's attack success rate).

With the model in float16/bfloat16, ``v`` stays a float32 parameter (cast to the embedding
table's dtype where it enters the text encoder), latents, targets and the loss are float32, and
the learned vectors come back float32 on the CPU.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from editflow.edits.request import DEFAULT_TEMPLATES
from editflow.errors import EditflowError
from editflow.inversion.tokens import LearnedTokens, check_token_name, trainable_token
from editflow.models import diffusion as D


@dataclass
class InversionConfig:
    steps: int = 200
    lr: float = 0.02
    batch: int = 8
    vectors: int = 1
    init_word: str | None = None  # None: the mean input embedding of the vocabulary
    radius: float | None = None  # PGD: keep ‖v - v_init‖ <= radius · ‖v_init‖ (projected after each step)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    seed: int = 0

    def __post_init__(self):
        self.templates = tuple(self.templates)
        if self.steps < 1 or self.batch < 1 or self.vectors < 1:
            raise ValueError("steps, batch and vectors must be >= 1")
        if self.lr <= 0 or (self.radius is not None and self.radius <= 0):
            raise ValueError("lr and radius must be > 0")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if bad or not self.templates:
            raise ValueError(f"each template needs exactly one '{{}}' for the token: {bad[:3]}")


def initial_embedding(pipe, config: InversionConfig) -> torch.Tensor:
    """The start ``(vectors, d)``: the init word's mean embedding or the vocabulary's; float32 (averaged
    in float32 whatever the table's dtype), on the table's device."""
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    if config.init_word is None:
        vec = table.float().mean(0)
    else:
        ids = pipe.tokenizer(config.init_word, add_special_tokens=False).input_ids
        if not ids:
            raise EditflowError(f"init word {config.init_word!r} has no tokens")
        vec = table[ids].float().mean(0)
    return vec[None].repeat(config.vectors, 1)


def invert(pipe, images: list[Image.Image], token: str, config: InversionConfig | None = None, patch=None,
           progress=None) -> LearnedTokens:
    """Learn ``token`` from ``images`` (a few of one concept); ``progress(n, loss)`` after each step."""
    config = config or InversionConfig()
    check_token_name(token)
    D.check_trainable(pipe)
    if not images:
        raise EditflowError("inversion needs at least one image")
    x0_all = D.to_latents(pipe, images)
    gen = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    sched = pipe.scheduler
    losses: list[float] = []
    init = initial_embedding(pipe, config)
    bound = None if config.radius is None else config.radius * init.norm(dim=-1, keepdim=True)
    with D.frozen(pipe.unet, pipe.text_encoder, getattr(pipe, "vae", None)), \
            (patch.apply(pipe) if patch is not None else nullcontext()), \
            trainable_token(pipe, token, init) as param:
        opt = torch.optim.AdamW([param], lr=config.lr, weight_decay=0.0)
        for _ in range(config.steps):
            idx = torch.randint(0, len(x0_all), (config.batch,), generator=gen)
            x0 = x0_all[idx]
            noise = torch.randn(x0.shape, generator=gen).to(x0.device)
            t = D.sample_timesteps(sched, config.batch, gen)
            # the bare token: diffusers expands a multi-vector token itself
            prompts = [rng.choice(config.templates).format(token) for _ in range(config.batch)]
            pred = D.unet_output(pipe, D.add_noise(sched, x0, noise, t), t, D.text_features(pipe, prompts))
            loss = torch.nn.functional.mse_loss(pred.float(), D.target(sched, x0, noise, t).float())
            if not torch.isfinite(loss):
                raise EditflowError("inversion diverged (non-finite loss); lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if bound is not None:  # projected gradient descent: back onto the ball around the init
                with torch.no_grad():
                    step = param - init
                    param.copy_(init + step * (bound / step.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1))
            losses.append(loss.item())
            if progress is not None:
                progress(1, losses[-1])
        vectors = param.detach().to("cpu", torch.float32).clone()
    k = max(1, len(losses) // 10)
    meta = {"images": len(images), "config": asdict(config), "loss_first": sum(losses[:k]) / k,
            "loss_last": sum(losses[-k:]) / k, "against_patch": patch is not None}
    if patch is not None:
        meta["patch_concepts"] = patch.metadata.get("concepts")
    return LearnedTokens(token, vectors, meta)
