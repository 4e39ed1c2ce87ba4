"""Erase what a context implies: train prompts that never name the concept to draw the anchor.

"a woman at the beach" draws a naked woman on a model whose training captions showed people
naked at the beach, yet no text feature of that prompt says "naked": a key/value edit of the
concept's words cannot reach it. Concept Ablation (Kumari et al., ICCV 2023, eq. 3, the
model-based variant) trains the model so that the prompt ``c*`` predicts what the base model
predicts for the anchored prompt ``c`` on the anchored prompt's own pictures::

    L = E ||ε_θ(x_t, c*, t) − sg(ε_θ0(x_t, c, t))||² + λ E_keep ||ε_θ(x_k,t, c_k, t) − ε_θ0(x_k,t, c_k, t)||²

with ``c*`` an implied prompt of the request ("a person at the beach"), ``c`` its anchored prompt
("a clothed person at the beach", :func:`~editflow.edits.request.implied_pairs`), ``x_t`` the base
model's drawings of ``c``, noised, and the second term the kept prompts' pictures keeping the base
prediction (λ = ``implied_preserve``). What is trained is a rank-``lora_rank`` LoRA
(:mod:`editflow.edits.lora`) on the patch's target projections, on top of the ungated closed form,
whose directions are held fixed: the named concept stays erased by the closed form, the LoRA only
adds what the context implies. Adam's learning rate follows a cosine to ``lr_final`` of
``implied_lr`` (Loshchilov & Hutter 2017, eq. 5). Latents, targets, losses and the LoRA stay float32
in a float16/bfloat16 model.
"""

from __future__ import annotations

import random

import torch
from PIL import Image

from editflow.edits.patch import Patch
from editflow.errors import EditflowError
from editflow.finetune.config import FinetuneConfig
from editflow.finetune.lora_stage import lora_over_patch, loss_summary
from editflow.models import diffusion as D

F = torch.nn.functional


def check_implied(pipe, patch: Patch, n_pairs: int) -> None:
    """The stage's preconditions, checked before any picture is drawn: a UNet it can train, an
    ungated closed form to start from, implied prompts to train on."""
    D.check_trainable(pipe)
    if patch.gate is not None:
        raise EditflowError("--finetune implied trains over an ungated closed form (the LoRA acts on every "
                            "prompt, a gate on the concept's words only); compute the patch with gated=False")
    if not n_pairs:
        raise EditflowError("--finetune implied needs implied prompts (a concept whose context draws it, such "
                            "as nudity at the beach); this request has none")


def implied_finetune(pipe, patch: Patch, pairs: list[tuple[str, str, Image.Image]],
                     keep: list[tuple[str, Image.Image]], config: FinetuneConfig, progress=None
                     ) -> tuple[Patch, dict]:
    """Train a LoRA over ``patch`` for ``config.implied_steps`` steps (module docstring).

    ``pairs``: (implied prompt, anchored prompt, the base model's picture of the anchored prompt);
    ``keep``: (prompt, the base model's picture) pairs whose predictions must not move.
    Returns the new patch and first/last loss averages.
    """
    check_implied(pipe, patch, len(pairs))
    rng = random.Random(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    sched = D.noise_scheduler(pipe.scheduler)  # once: building it per step costs 4 ms
    x_pair = D.to_latents(pipe, [img for _, _, img in pairs])
    x_keep = D.to_latents(pipe, [img for _, img in keep]) if keep else None
    B = config.batch

    def noised(x_all: torch.Tensor, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = x_all[idx]
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t = D.sample_timesteps(sched, len(idx), gen)
        return t, D.add_noise(sched, x0, noise, t)

    history: list[dict] = []
    with lora_over_patch(pipe, patch, config.lora_rank, config.seed, config.implied_lr, config.implied_steps,
                         config.lr_final) as (lora, opt, lr_at):
        for _ in range(config.implied_steps):
            idx = [rng.randrange(len(pairs)) for _ in range(B)]
            t, x_t = noised(x_pair, idx)
            with torch.no_grad():
                goal = D.unet_output(pipe, x_t, t, D.text_features(pipe, [pairs[i][1] for i in idx]))
                implied = D.text_features(pipe, [pairs[i][0] for i in idx])
            with lora.active():
                ablate = F.mse_loss(D.unet_output(pipe, x_t, t, implied), goal)
            kept = torch.zeros(())
            if x_keep is not None:
                kidx = [rng.randrange(len(keep)) for _ in range(B)]
                tk, xk_t = noised(x_keep, kidx)
                with torch.no_grad():
                    fk = D.text_features(pipe, [keep[i][0] for i in kidx])
                    base = D.unet_output(pipe, xk_t, tk, fk)
                with lora.active():
                    kept = F.mse_loss(D.unet_output(pipe, xk_t, tk, fk), base)
            loss = ablate + config.implied_preserve * kept
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lr_at.step()
            history.append({"loss": loss.item(), "implied": ablate.item(), "preserve": kept.item()})
            if progress is not None:
                progress(1, history[-1])
        edit = lora.edit()
    return Patch(edit, None, dict(patch.metadata)), loss_summary(history)
