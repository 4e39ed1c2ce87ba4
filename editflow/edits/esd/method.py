"""ESD-x and ESD-u (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023, eq. 3):

    ε_θ(x_t, c, t)  ←  ε_θ*(x_t, t) − η [ε_θ*(x_t, c, t) − ε_θ*(x_t, t)]

fine-tunes the cross-attention so the concept's prediction follows the frozen model's
negatively guided one; ``x_t`` come from the frozen model's own sampling trajectories for the
concept's prompts. The right-hand side is an affine combination (weights 1 + η and −η), so it
holds as written in any prediction parameterisation affine in ε for a given ``x_t``
(ε, v, x0): editflow applies it to whatever the UNet predicts.

With ``preserve_weight`` > 0 (editflow's addition; 0 as published) the patched model's predictions
on the request's preserved prompts are also pulled to the frozen model's. Both train a patch with
the base frozen (merge mode):

* ``esd-x`` the cross-attention keys and values (``attn2.to_k``/``to_v``, the layers that read
  the text; the paper's ESD-x trains all of cross-attention) as a full-rank delta
  ``ΔW_l = up_l @ I``, applied through editflow's attention processor;
* ``esd-u`` the layers that do not read the text (the paper: all non-cross-attention weights;
  editflow: a rank-``lora_rank`` LoRA on every self-attention projection ``attn1.to_q/k/v/out``),
  trained as a peft LoRA adapter (:mod:`editflow.edits.lora`).

With the model loaded in float16/bfloat16 the frozen base runs in that dtype while the trained
factors stay float32 on its device (cast where they meet it); trajectories, predictions, targets
and the loss are float32 (:mod:`editflow.models.diffusion`); the patch comes back float32.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import torch

from editflow.edits.attention import attention_processors, delta_processors
from editflow.edits.closed_form import LowRankEdit
from editflow.edits.esd.config import ESDConfig
from editflow.edits.gate import layer_delta
from editflow.edits.lora import peft_lora
from editflow.edits.patch import Patch, patch_metadata
from editflow.edits.registry import GRADIENT
from editflow.edits.request import EraseRequest, erase_pairs, preserve_pairs
from editflow.edits.targets import TargetSpec
from editflow.models import diffusion as D


def esd_target(uncond: torch.Tensor, cond: torch.Tensor, eta: float) -> torch.Tensor:
    """``ε*(x_t) − η (ε*(x_t, c) − ε*(x_t))`` (ESD eq. 3)."""
    return uncond - eta * (cond - uncond)


def trajectories(pipe, prompts: list[str], seeds: list[int], steps: int) -> list[tuple[torch.Tensor, int, str]]:
    """``(x_t, t, prompt)`` along the frozen model's sampling trajectory of each prompt."""
    out: list[tuple[torch.Tensor, int, str]] = []
    gens = [torch.Generator().manual_seed(s) for s in seeds]

    def record(p, i, t, kwargs):
        ts = p.scheduler.timesteps
        if i + 1 < len(ts):
            for k, lat in enumerate(kwargs["latents"]):
                out.append((lat.detach().float().clone(), int(ts[i + 1]), prompts[k]))
        return kwargs

    with torch.no_grad():
        pipe(prompts, num_inference_steps=steps, generator=gens, output_type="latent",
             callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"])
    return out


ESD_U_PATTERNS = ("*attn1.to_q", "*attn1.to_k", "*attn1.to_v", "*attn1.to_out.0")


class ESD:
    """The ESD fine-tuning baselines as edit methods (``editflow erase --method esd-x|esd-u``)."""

    config_class = ESDConfig
    kind = GRADIENT

    def __init__(self, name: str = "esd-x"):
        if name not in ("esd-x", "esd-u"):
            raise ValueError(f"unknown ESD variant {name!r}")
        self.name = name

    @contextmanager
    def _factors(self, unet, modules: dict[str, torch.nn.Linear], config: ESDConfig, gen: torch.Generator):
        """(parameters, switch, edit) of the trainable patch: ``with switch():`` puts it in effect,
        ``edit()`` returns it. ESD-x: a full-rank delta through editflow's attention processors;
        ESD-u: a peft LoRA (:mod:`editflow.edits.lora`)."""
        names = sorted(modules)
        if self.name == "esd-x":
            d = modules[names[0]].in_features
            device = modules[names[0]].weight.device  # float32 master factors where the UNet runs
            eye = torch.eye(d, device=device)
            up = {n: torch.nn.Parameter(torch.zeros(modules[n].out_features, d, device=device)) for n in names}
            make = delta_processors(lambda name: layer_delta(name, up, eye))
            yield (list(up.values()), lambda: attention_processors(unet, make),
                   lambda: LowRankEdit({n: u.detach().cpu().clone() for n, u in up.items()}, eye.cpu().clone()))
            return
        r = config.lora_rank
        up = {n: torch.zeros(modules[n].out_features, r) for n in names}
        down = {n: torch.randn(r, modules[n].in_features, generator=gen) / modules[n].in_features ** 0.5
                for n in names}
        with peft_lora(unet, up, down) as lora:
            yield lora.parameters(), lora.active, lora.edit

    def compute(self, pipe, request: EraseRequest, config: ESDConfig, targets: TargetSpec | None = None,
                cache=None, progress=None) -> Patch:
        D.check_trainable(pipe)
        if targets is None:
            targets = TargetSpec() if self.name == "esd-x" else TargetSpec(ESD_U_PATTERNS, reads_text=False)
        modules = targets.find(pipe.unet)
        gen = torch.Generator().manual_seed(config.seed)
        rng = random.Random(config.seed)
        prompts = [p for p, _, _ in erase_pairs(request)]
        keep = [p for p, _ in preserve_pairs(request)]
        picks = [prompts[i % len(prompts)] for i in rng.sample(range(max(len(prompts), config.trajectories)),
                                                               config.trajectories)]
        pool = trajectories(pipe, picks, [config.seed * 7907 + i for i in range(len(picks))], config.sample_steps)
        with D.frozen(pipe.unet, pipe.text_encoder, getattr(pipe, "vae", None)), \
                self._factors(pipe.unet, modules, config, gen) as (params, in_effect, trained):
            opt = torch.optim.Adam(params, lr=config.esd_lr)
            with torch.no_grad():
                empty = D.text_features(pipe, [""])
            for _ in range(config.esd_steps):
                batch = [pool[rng.randrange(len(pool))] for _ in range(config.esd_batch)]
                x_t = torch.stack([b[0] for b in batch])
                t = torch.tensor([b[1] for b in batch])
                with torch.no_grad():
                    c = D.text_features(pipe, [b[2] for b in batch])
                    cond = D.unet_output(pipe, x_t, t, c)
                    uncond = D.unet_output(pipe, x_t, t, empty.expand(len(batch), -1, -1))
                    goal = esd_target(uncond, cond, config.eta)
                with in_effect():
                    pred = D.unet_output(pipe, x_t, t, c)
                loss = torch.nn.functional.mse_loss(pred, goal)
                if config.preserve_weight and keep:
                    with torch.no_grad():
                        kf = D.text_features(pipe, [rng.choice(keep) for _ in batch])
                        base = D.unet_output(pipe, x_t, t, kf)
                    with in_effect():
                        loss = loss + config.preserve_weight * torch.nn.functional.mse_loss(
                            D.unet_output(pipe, x_t, t, kf), base)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if progress is not None:
                    progress(1)
            edit = trained()
        return Patch(edit, None, patch_metadata(pipe, request, self.name, config, targets,
                                          {"rank": edit.rank, "gated": False, "loss_last": loss.item(),
                                           "targets_read_text": targets.reads_text}))
