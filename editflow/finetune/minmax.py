"""Min-max training of a patch against persistent concept-inversion attackers.

AdvUnlearn (Zhang et al. 2024, eq. 5) alternates an attacker that searches the text-embedding
space for inputs that still draw the concept with a defender that unlearns them. editflow plays
that game on the patch alone, with the attack the evaluation measures (Pham et al. 2023):

* **attacker** -- ``attackers`` learned tokens per concept, trained by textual inversion (Gal et
  al. 2023, eq. 2) against the *current* patched model, ``attacker_steps`` Adam steps each per
  defender step in turn; kept for the whole run (``restart = 0``) or filed in a replay bank and
  started afresh every ``restart`` steps;
* **defender** -- a rank-``lora_rank`` LoRA (:mod:`editflow.edits.lora`) on every target
  projection, on top of the ungated closed-form patch, trained so that every attacker's token,
  ``replay`` banked tokens and the concept's words (a ``scene_words`` share of them in the
  request's contexts) predict ESD's negatively guided target (Gandikota et al. 2023, eq. 3)
  ``ε(x_t, anchor) − η (ε(x_t, concept) − ε(x_t, anchor))`` of the base model, while preserved
  images keep the base prediction (``minmax_preserve``; ``preserve_focus`` draws them in
  proportion to their running error). Adam's learning rate follows a cosine to ``lr_final`` of
  ``minmax_lr`` (Loshchilov & Hutter 2017, eq. 5).

The closed-form patch must be ungated: a gate passes text features outside the concept's subspace
unchanged, which is exactly where the attacker goes. With the model in float16/bfloat16, the LoRA
and the attackers' embeddings stay float32, and so do latents, targets and losses. How the
defaults were chosen, with the measured attack success per training seed: ``docs/minmax.md``.
"""

from __future__ import annotations

import random
from contextlib import ExitStack

import torch
from PIL import Image

from editflow.edits.esd.method import esd_target
from editflow.edits.patch import Patch
from editflow.edits.request import ConceptSpec
from editflow.errors import EditflowError
from editflow.finetune.config import FinetuneConfig
from editflow.finetune.lora_stage import lora_over_patch, loss_summary
from editflow.inversion.invert import InversionConfig, initial_embedding
from editflow.models import diffusion as D
from editflow.models.tokens import trainable_token

F = torch.nn.functional


def minmax_finetune(pipe, patch: Patch, concepts: list[ConceptSpec], images: dict[str, list[Image.Image]],
                    preserve: list[tuple[str, Image.Image]], templates: tuple[str, ...], config: FinetuneConfig,
                    progress=None, contexts: dict[str, tuple[str, ...]] | None = None) -> tuple[Patch, dict]:
    """Train a LoRA over ``patch`` for ``config.minmax_steps`` defender steps (module docstring).

    ``images``: pictures of each concept (by name); ``preserve``: (prompt, picture) pairs of
    concepts to keep; ``templates``: prompt templates with one ``{}``; ``contexts``: templates in
    which people name each concept (by name), a ``scene_words`` share of the word term's prompts.
    Returns the new patch and first/last loss averages.
    """
    contexts = contexts or {}
    D.check_trainable(pipe)
    if patch.gate is not None:
        raise EditflowError("--finetune minmax trains over an ungated closed form (a gate lets the attacker's "
                            "tokens through); compute the patch with gated=False")
    rng = random.Random(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    sched = D.noise_scheduler(pipe.scheduler)  # once: building it per step costs 4 ms
    x_concept = {c.name: D.to_latents(pipe, images[c.name]) for c in concepts}
    x_keep = D.to_latents(pipe, [img for _, img in preserve]) if preserve else None
    keep_prompts = [p for p, _ in preserve]
    B = config.batch
    keep_err = None  # running preservation error per preserved image (for preserve_focus)

    def noised(x_all: torch.Tensor, idx: list[int]):
        x0 = x_all[idx]
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        t = D.sample_timesteps(sched, len(idx), gen)
        return x0, noise, t, D.add_noise(sched, x0, noise, t)

    def keep_error(kidx: list[int]) -> torch.Tensor:
        """Per-image squared error of the patched prediction on noised preserved images against the base's."""
        _, _, tk, xk_t = noised(x_keep, kidx)
        with torch.no_grad():
            fk = D.text_features(pipe, [keep_prompts[i] for i in kidx])
            goal = D.unet_output(pipe, xk_t, tk, fk)
        with lora.active():
            out = D.unet_output(pipe, xk_t, tk, fk)
        return (out - goal).square().mean(dim=tuple(range(1, out.ndim)))

    def keep_batch() -> list[int]:
        if config.preserve_focus and keep_err is not None:  # partly in proportion to the running error
            probs = (config.preserve_focus * keep_err / keep_err.sum()
                     + (1 - config.preserve_focus) / len(keep_err))
            return torch.multinomial(probs, B, replacement=True, generator=gen).tolist()
        return [rng.randrange(len(x_keep)) for _ in range(B)]

    def guided(concept: ConceptSpec, x_t: torch.Tensor, t: torch.Tensor, said: list[str]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the concept's words in ``said`` and the base model's negatively guided target there."""
        words = D.text_features(pipe, [s.format(rng.choice(concept.words)) for s in said])
        neutral = D.unet_output(pipe, x_t, t, D.text_features(pipe, [s.format(concept.anchor).strip() for s in said]))
        return words, esd_target(neutral, D.unet_output(pipe, x_t, t, words), config.eta)

    def start(concept: ConceptSpec, k: int) -> torch.Tensor:
        word = [concept.anchor.strip() or None, None][k % 2]
        return initial_embedding(pipe, InversionConfig(init_word=word))

    K = config.attackers
    tokens = {c.name: [f"<minmax-{i}-{k}>" for k in range(K)] for i, c in enumerate(concepts)}
    bank: dict[str, list[torch.Tensor]] = {c.name: [] for c in concepts}
    restarts = {c.name: 0 for c in concepts}
    history: list[dict] = []
    with ExitStack() as stack:
        lora, opt, lr_at = stack.enter_context(lora_over_patch(
            pipe, patch, config.lora_rank, config.seed, config.minmax_lr, config.minmax_steps, config.lr_final))
        attacker = {c.name: [stack.enter_context(trainable_token(pipe, tokens[c.name][k], start(c, k)))
                             for k in range(K)] for c in concepts}
        attacker_opt = {n: [torch.optim.Adam([v], lr=config.attack_lr) for v in vs] for n, vs in attacker.items()}
        if x_keep is not None and config.preserve_focus:  # one pass over the preserved images to start from
            with torch.no_grad():
                keep_err = torch.cat([keep_error(list(range(i, min(i + B, len(x_keep))))).cpu()
                                      for i in range(0, len(x_keep), B)])  # on the CPU, as the generator
        for step in range(config.minmax_steps):
            concept = concepts[step % len(concepts)]
            name = concept.name
            done = step // len(concepts)  # this concept's defender steps so far
            if done and config.restart and done % config.restart == 0:  # file the attackers, start afresh
                restarts[name] += 1
                for k, v in enumerate(attacker[name]):
                    bank[name].append(v.detach().clone())
                    with torch.no_grad():
                        v.copy_(start(concept, restarts[name] * K + k))
                    attacker_opt[name][k] = torch.optim.Adam([v], lr=config.attack_lr)
            turn = done % K  # the attackers take turns; the defender answers all of them
            v, tok = attacker[name][turn], tokens[name][turn]
            x_all = x_concept[name]
            for _ in range(config.attacker_steps):  # the attacker: textual inversion against the patch
                x0, noise, t, x_t = noised(x_all, [rng.randrange(len(x_all)) for _ in range(B)])
                prompts = [rng.choice(templates).format(tok) for _ in range(B)]
                with lora.active(trainable=False):
                    attack = F.mse_loss(D.unet_output(pipe, x_t, t, D.text_features(pipe, prompts)),
                                        D.target(sched, x0, noise, t))
                attacker_opt[name][turn].zero_grad(set_to_none=True)
                attack.backward()
                attacker_opt[name][turn].step()
            x0, noise, t, x_t = noised(x_all, [rng.randrange(len(x_all)) for _ in range(B)])
            chosen = [rng.choice(templates) for _ in range(B)]
            with torch.no_grad():
                adv = [D.text_features(pipe, [s.format(token) for s in chosen]) for token in tokens[name]]
                if bank[name] and config.replay:
                    now = v.detach().clone()
                    for past in rng.sample(bank[name], min(config.replay, len(bank[name]))):
                        v.copy_(past)
                        adv.append(D.text_features(pipe, [s.format(tok) for s in chosen]))
                    v.copy_(now)
                words, goal = guided(concept, x_t, t, chosen)
                said_goal = goal
                if config.scene_words and contexts.get(name):  # the word also in the ways people say it
                    said = [rng.choice(contexts[name]) if rng.random() < config.scene_words else s for s in chosen]
                    words, said_goal = guided(concept, x_t, t, said)
            with lora.active():
                adversarial = sum(F.mse_loss(D.unet_output(pipe, x_t, t, f), goal) for f in adv) / len(adv)
                word = F.mse_loss(D.unet_output(pipe, x_t, t, words), said_goal)
            keep = torch.zeros(())
            if x_keep is not None:
                kidx = keep_batch()
                per_image = keep_error(kidx)
                keep = per_image.mean()
                if keep_err is not None:
                    keep_err[kidx] = 0.5 * keep_err[kidx] + 0.5 * per_image.detach().cpu()
            loss = adversarial + word + config.minmax_preserve * keep
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"loss": loss.item(), "attack": attack.item(), "adversarial": adversarial.item(),
                            "word": word.item(), "preserve": keep.item(), "lr": opt.param_groups[0]["lr"]})
            lr_at.step()
            if progress is not None:
                progress(1, history[-1])
        edit = lora.edit()
    facts = loss_summary(history)
    facts["attacker_restarts"] = sum(restarts.values())
    return Patch(edit, None, dict(patch.metadata)), facts
