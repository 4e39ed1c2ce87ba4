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
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass

import torch
from PIL import Image

from editflow.edits.request import DEFAULT_TEMPLATES
from editflow.errors import EditflowError
from editflow.models import diffusion as D
from editflow.models.tokens import LearnedTokens, check_token_name, trainable_token


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
    return invert_tries(pipe, images, [token], [config or InversionConfig()], patch, progress)[0]


def invert_tries(pipe, images: list[Image.Image], tokens: list[str], configs: list[InversionConfig], patch=None,
                 progress=None) -> list[LearnedTokens]:
    """Several independent inversions of ``images`` at once, one token per config (its own seed, start,
    templates, learning rate and radius; all share ``steps`` and ``batch``): each step draws every
    try's batch from the try's own generators, as :func:`invert` alone would, and runs them as one
    text-encoder and one UNet batch. A token appears only in its own try's prompts, so its gradient
    is its own loss's and the tries stay independent; one batch of ``tries x batch`` keeps a CPU
    busier than ``tries`` small ones, an accelerator much more so. ``progress(n, loss)`` after each
    step (``loss``: the tries' mean)."""
    if len(tokens) != len(configs) or not tokens:
        raise ValueError("one config per token, at least one")
    if len({(c.steps, c.batch) for c in configs}) != 1:
        raise ValueError("tries inverted together share steps and batch")
    if len(set(tokens)) != len(tokens):
        raise EditflowError("two tries share a token name")
    for token in tokens:
        check_token_name(token)
    D.check_trainable(pipe)
    if not images:
        raise EditflowError("inversion needs at least one image")
    x0_all = D.to_latents(pipe, images)
    steps, batch = configs[0].steps, configs[0].batch
    gens = [torch.Generator().manual_seed(c.seed) for c in configs]
    rngs = [random.Random(c.seed) for c in configs]
    sched = D.noise_scheduler(pipe.scheduler)  # once: building it per step costs 4 ms
    losses: list[list[float]] = [[] for _ in configs]
    inits = [initial_embedding(pipe, c) for c in configs]
    bounds = [None if c.radius is None else c.radius * init.norm(dim=-1, keepdim=True)
              for c, init in zip(configs, inits)]
    with D.frozen(pipe.unet, pipe.text_encoder, getattr(pipe, "vae", None)), \
            (patch.apply(pipe) if patch is not None else nullcontext()), ExitStack() as stack:
        params = [stack.enter_context(trainable_token(pipe, token, init)) for token, init in zip(tokens, inits)]
        opt = torch.optim.AdamW([{"params": [p], "lr": c.lr} for p, c in zip(params, configs)], weight_decay=0.0)
        for _ in range(steps):
            x0, noise, t, prompts = [], [], [], []
            for token, c, gen, rng in zip(tokens, configs, gens, rngs):
                idx = torch.randint(0, len(x0_all), (batch,), generator=gen)
                x0.append(x0_all[idx])
                noise.append(torch.randn(x0[-1].shape, generator=gen).to(x0[-1].device))
                t.append(D.sample_timesteps(sched, batch, gen))
                # the bare token: diffusers expands a multi-vector token itself
                prompts += [rng.choice(c.templates).format(token) for _ in range(batch)]
            x0, noise, t = torch.cat(x0), torch.cat(noise), torch.cat(t)
            pred = D.unet_output(pipe, D.add_noise(sched, x0, noise, t), t, D.text_features(pipe, prompts))
            err = (pred.float() - D.target(sched, x0, noise, t).float()).pow(2)
            per_try = err.reshape(len(configs), -1).mean(1)  # each try's mean squared error, as alone
            if not torch.isfinite(per_try).all():
                raise EditflowError("inversion diverged (non-finite loss); lower --lr")
            opt.zero_grad(set_to_none=True)
            per_try.sum().backward()
            opt.step()
            with torch.no_grad():
                for param, init, bound in zip(params, inits, bounds):
                    if bound is not None:  # projected gradient descent: back onto the ball around the init
                        step = param - init
                        shrink = (bound / step.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1)
                        param.copy_(init + step * shrink)
            values = per_try.tolist()
            for curve, value in zip(losses, values):
                curve.append(value)
            if progress is not None:
                progress(1, sum(values) / len(values))
        vectors = [param.detach().to("cpu", torch.float32).clone() for param in params]
    out = []
    for token, c, vec, curve in zip(tokens, configs, vectors, losses):
        k = max(1, len(curve) // 10)
        meta = {"images": len(images), "config": asdict(c), "loss_first": sum(curve[:k]) / k,
                "loss_last": sum(curve[-k:]) / k, "against_patch": patch is not None}
        if patch is not None:
            meta["patch_concepts"] = patch.metadata.get("concepts")
        out.append(LearnedTokens(token, vec, meta))
    return out
