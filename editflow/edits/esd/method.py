"""ESD-x (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023, eq. 3):

    ε_θ(x_t, c, t)  ←  ε_θ*(x_t, t) − η [ε_θ*(x_t, c, t) − ε_θ*(x_t, t)]

fine-tunes the cross-attention so the concept's prediction follows the frozen model's
negatively guided one; ``x_t`` come from the frozen model's own sampling trajectories for the
concept's prompts. The right-hand side is an affine combination (weights 1 + η and −η), so it
holds as written in any prediction parameterisation affine in ε for a given ``x_t``
(ε, v, x0): editflow applies it to whatever the UNet predicts.

editflow trains the cross-attention keys and values (``attn2.to_k``/``to_v``, the layers that
read the text: the paper's ESD-x trains all of cross-attention) as a full-rank delta
``ΔW_l = up_l @ I``, so the result is a patch like every other method's (merge mode, base frozen).
"""

from __future__ import annotations

import random

import torch

from editflow.edits.attention import CrossAttnProcessor, attention_processors
from editflow.edits.closed_form import LowRankEdit
from editflow.edits.esd.config import ESDConfig
from editflow.edits.gate import LowRankDelta
from editflow.edits.patch import Patch
from editflow.edits.request import EraseRequest, erase_pairs
from editflow.edits.targets import TargetSpec
from editflow.edits.uce.method import metadata
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


class ESD:
    """The ESD-x fine-tuning baseline as an edit method (``editflow erase --method esd-x``)."""

    config_class = ESDConfig

    def __init__(self, name: str = "esd-x"):
        self.name = name

    def compute(self, pipe, request: EraseRequest, config: ESDConfig, targets: TargetSpec | None = None,
                cache=None, progress=None) -> Patch:
        D.check_trainable(pipe)
        targets = targets or TargetSpec()
        modules = targets.find(pipe.unet)
        d = next(iter(modules.values())).in_features
        rng = random.Random(config.seed)
        prompts = [p for p, _, _ in erase_pairs(request)]
        picks = [prompts[i % len(prompts)] for i in rng.sample(range(max(len(prompts), config.trajectories)),
                                                               config.trajectories)]
        pool = trajectories(pipe, picks, [config.seed * 7907 + i for i in range(len(picks))], config.sample_steps)
        names = sorted(modules)
        up = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(modules[n].out_features, d)) for n in names])
        eye = torch.eye(d)
        ups = dict(zip(names, up))

        def delta_for(attn_name: str):
            k, v = ups.get(f"{attn_name}.to_k"), ups.get(f"{attn_name}.to_v")
            return None if k is None and v is None else LowRankDelta(eye, k, v)

        opt = torch.optim.Adam(up.parameters(), lr=config.esd_lr)
        with D.frozen(pipe.unet, pipe.text_encoder, getattr(pipe, "vae", None)):
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
                with attention_processors(pipe.unet, lambda n: CrossAttnProcessor(n, delta_for(n))):
                    pred = D.unet_output(pipe, x_t, t, c)
                loss = torch.nn.functional.mse_loss(pred, goal)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if progress is not None:
                    progress(1)
        edit = LowRankEdit({n: u.detach().clone() for n, u in zip(names, up)}, eye.clone())
        return Patch(edit, None, metadata(pipe, request, self.name, config, targets,
                                          {"rank": d, "gated": False, "loss_last": loss.item()}))
