"""Forget-Me-Not (Zhang et al., "Forget-Me-Not: Learning to Forget in Text-to-Image Diffusion
Models", 2023, §3.2) on a patch's own factors.

The patch's ``ΔW_l = up_l @ down`` (plus ``extra_rank`` zero-initialised directions) is trained
with the base model frozen, starting from the closed-form solution, on

* attention re-steering: ``L_attn = Σ_l ‖A_l[:, :, :, concept tokens]‖²``, the squared
  cross-attention probabilities on the concept's token positions (captured by editflow's
  attention processor, :func:`editflow.edits.attention.capture_attention`); "concept tokens"
  follow the erasure's token policy (:func:`concept_mask`);
* visual denoising: ``L_den = ‖x̂0(x_t, c) − x0_fallback‖²`` where ``x0_fallback`` is the image the
  base model draws for the same prompt and seed with attention to the concept's tokens zeroed
  (:func:`editflow.edits.attention.suppress_tokens`: the concept's "natural fallback") and
  ``x_t`` is that image noised;
* preservation (editflow's addition): ``‖ε_patched(x_t, c_p) − ε_base(x_t, c_p)‖²`` on preserved
  prompts, so the factors do not drift into other concepts.

A gate, when the patch has one, stays as calibrated.

Precision: the factors are float32 parameters on the UNet's device while a float16/bfloat16 base
runs in its own dtype (the delta is computed in float32 and cast to the hidden states' dtype);
attention maps, ``x̂0``, targets and losses are float32; the new patch's factors are float32 on
the CPU.
"""

from __future__ import annotations

import random

import torch

from editflow.edits.attention import (
    attention_processors,
    capture_attention,
    delta_processors,
    suppress_tokens,
    token_attention,
)
from editflow.edits.closed_form import LowRankEdit
from editflow.edits.conditioning import TokenPolicy, positions
from editflow.edits.gate import LowRankDelta, layer_delta
from editflow.edits.patch import Patch
from editflow.finetune.config import FinetuneConfig
from editflow.models import diffusion as D


class TrainableFactors(torch.nn.Module):
    """A patch's factors as parameters: ``up_l`` per layer, a shared ``down``, grown by ``extra`` rows;
    float32 on ``device`` (the new rows drawn on the CPU from ``seed``)."""

    def __init__(self, patch: Patch, extra: int, seed: int = 0, device: torch.device | str = "cpu"):
        super().__init__()
        down = patch.edit.down.float().cpu()
        d = down.shape[1]
        gen = torch.Generator().manual_seed(seed)
        grow = torch.randn(extra, d, generator=gen) / d**0.5
        self.names = sorted(patch.edit.up)
        self.down = torch.nn.Parameter(torch.cat([down, grow]).to(device))
        ups = [patch.edit.up[n].float().cpu() for n in self.names]
        self.up = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.cat([u, torch.zeros(u.shape[0], extra)], 1).to(device)) for u in ups])
        self.gate = patch.gate
        self._by_name = dict(zip(self.names, self.up))  # the same parameters, looked up per layer

    def edit(self) -> LowRankEdit:
        """The current factors, float32 on the CPU."""
        return LowRankEdit({n: u.detach().cpu().clone() for n, u in zip(self.names, self.up)},
                           self.down.detach().cpu().clone())

    def delta_for(self, attn_name: str) -> LowRankDelta | None:
        return layer_delta(attn_name, self._by_name, self.down, self.gate)


def concept_mask(pipe, prompts: list[str], words: list[str], length: int,
                 policy: TokenPolicy = TokenPolicy.through_pad) -> torch.Tensor:
    """(batch, length) positions that carry each prompt's concept word under the token policy:
    with ``through_pad`` every position from the word on, since a causal text encoder carries the
    concept into all later tokens (zeroing the word's own positions alone leaves it drawn)."""
    mask = torch.zeros(len(prompts), length, dtype=torch.bool)
    for k, (p, w) in enumerate(zip(prompts, words)):
        mask[k, positions(pipe.tokenizer, p, w, policy, length)] = True
    return mask


def natural_fallbacks(pipe, pairs: list[tuple[str, str]], seeds: list[int], steps: int = 25,
                      guidance: float = 5.0, policy: TokenPolicy = TokenPolicy.through_pad) -> torch.Tensor:
    """Latents the base model draws for each (prompt, concept word) with the concept unattended."""
    prompts = [p for p, _ in pairs]
    length = pipe.tokenizer.model_max_length
    mask = concept_mask(pipe, prompts, [w for _, w in pairs], length, policy)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    with torch.no_grad(), suppress_tokens(pipe.unet, mask):
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                   output_type="latent").images
    return out.float()


def fmn_finetune(pipe, patch: Patch, erase: list[tuple[str, str]], preserve: list[str], config: FinetuneConfig,
                 policy: TokenPolicy = TokenPolicy.through_pad, progress=None) -> tuple[Patch, dict]:
    """Train ``patch``'s factors for ``config.steps`` steps; returns the new patch and loss facts.

    ``erase`` holds (prompt, concept word) pairs; ``preserve`` prompts to keep.
    """
    D.check_trainable(pipe)
    rng = random.Random(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    pool = rng.sample(erase, min(config.fallbacks, len(erase)))
    fallback = natural_fallbacks(pipe, pool, [config.seed * 7919 + i for i in range(len(pool))], policy=policy)
    factors = TrainableFactors(patch, config.extra_rank, config.seed, D.execution_device(pipe))
    opt = torch.optim.Adam(factors.parameters(), lr=config.lr)
    sched = D.noise_scheduler(pipe.scheduler)  # once: building it per step costs 4 ms
    history: list[dict] = []
    length = pipe.tokenizer.model_max_length
    with D.frozen(pipe.unet, pipe.text_encoder, getattr(pipe, "vae", None)):
        for _ in range(config.steps):
            idx = [rng.randrange(len(pool)) for _ in range(config.batch)]
            prompts, words = [pool[i][0] for i in idx], [pool[i][1] for i in idx]
            x0 = fallback[idx]
            noise = torch.randn(x0.shape, generator=gen).to(x0.device)
            t = D.sample_timesteps(sched, len(idx), gen)
            x_t = D.add_noise(sched, x0, noise, t)
            with torch.no_grad():
                feats = D.text_features(pipe, prompts)
            with capture_attention(pipe.unet, factors.delta_for) as maps:
                pred = D.unet_output(pipe, x_t, t, feats)
            resteer = token_attention(maps, concept_mask(pipe, prompts, words, length, policy))
            denoise = torch.nn.functional.mse_loss(D.predicted_x0(sched, x_t, pred, t), x0)
            loss = config.resteer_weight * resteer + config.denoise_weight * denoise
            keep = torch.zeros(())
            if preserve and config.preserve_weight:
                kp = [rng.choice(preserve) for _ in range(config.batch)]
                with torch.no_grad():
                    kf = D.text_features(pipe, kp)
                    xk = torch.randn(x0.shape, generator=gen).to(x0.device)
                    tk = D.sample_timesteps(sched, len(kp), gen)
                    base = D.unet_output(pipe, xk, tk, kf)
                with attention_processors(pipe.unet, delta_processors(factors.delta_for)):
                    keep = torch.nn.functional.mse_loss(D.unet_output(pipe, xk, tk, kf), base)
                loss = loss + config.preserve_weight * keep
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"loss": loss.item(), "resteer": resteer.item(), "denoise": denoise.item(),
                            "preserve": keep.item()})
            if progress is not None:
                progress(1, history[-1])
    k = max(1, len(history) // 5)
    facts = {name: {"first": sum(h[name] for h in history[:k]) / k, "last": sum(h[name] for h in history[-k:]) / k}
             for name in ("loss", "resteer", "denoise", "preserve")} if history else {}
    new = Patch(factors.edit(), patch.gate, dict(patch.metadata))
    return new, facts
