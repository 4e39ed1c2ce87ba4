"""What the LoRA stages over a closed-form patch share (:mod:`~editflow.finetune.minmax`,
:mod:`~editflow.finetune.implied`): the adapter started from the patch's directions, held fixed, plus
new ones (peft's LoRA, Hu et al. 2021, eq. 3), its optimiser with a cosine learning rate (Loshchilov
& Hutter 2017, eq. 5), and the first/last summary of the losses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from editflow.edits.lora import LoRA, peft_lora
from editflow.edits.patch import Patch
from editflow.models import diffusion as D


def start_factors(patch: Patch, modules: dict[str, torch.nn.Linear], rank: int, seed: int = 0
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, int]]:
    """(up, down, fixed) per layer: the patch's columns/rows first (held fixed), then a new rank-``rank``
    LoRA (``up`` zero, ``down`` Gaussian with variance ``1/d``)."""
    gen = torch.Generator().manual_seed(seed)
    up, down, fixed = {}, {}, {}
    for n in sorted(modules):
        u, d = patch.edit.up[n].float(), patch.edit.down_for(n).float()
        up[n] = torch.cat([u, torch.zeros(modules[n].out_features, rank)], 1)
        down[n] = torch.cat([d, torch.randn(rank, modules[n].in_features, generator=gen)
                             / modules[n].in_features ** 0.5], 0)
        fixed[n] = u.shape[1]
    return up, down, fixed


@contextmanager
def lora_over_patch(pipe, patch: Patch, rank: int, seed: int, lr: float, steps: int, lr_final: float
                    ) -> Iterator[tuple[LoRA, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]]:
    """``(lora, opt, schedule)``: a rank-``rank`` LoRA over ``patch`` on its target projections, the
    pipeline's models frozen, Adam at ``lr`` decaying by a cosine to ``lr_final × lr`` at the last of
    ``steps`` steps. On exit the UNet is as it was."""
    up0, down0, fixed = start_factors(patch, patch.targets.find(pipe.unet), rank, seed)
    with D.frozen(pipe.unet, pipe.text_encoder, getattr(pipe, "vae", None)), \
            peft_lora(pipe.unet, up0, down0, fixed) as lora:
        opt = torch.optim.Adam(lora.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps - 1), eta_min=lr_final * lr)
        yield lora, opt, schedule


def loss_summary(history: list[dict]) -> dict:
    """Each logged value's mean over the first and the last fifth of the steps."""
    if not history:
        return {}
    k = max(1, len(history) // 5)
    return {key: {"first": sum(h[key] for h in history[:k]) / k, "last": sum(h[key] for h in history[-k:]) / k}
            for key in history[0]}
