"""Trainable low-rank factors on a UNet's Linear layers, through peft's LoRA layers.

Gradient-trained patches (ESD-u, minmax) train ``ΔW_l = B_l A_l`` on some projections while the
base stays frozen. :func:`peft_lora` puts a peft LoRA adapter (Hu et al. 2021, eq. 3,
``h = W x + B A x``; ``lora_alpha = r`` so the scale is 1) on those layers, with the factors
the caller starts from, and takes it off again on exit, leaving the UNet as it was. The adapter
is off by default: inside :meth:`LoRA.active` the UNet computes with it, elsewhere it is the base
model (the frozen targets the losses compare against).

``fixed`` leading directions of every layer can be held still (a closed-form patch a LoRA trains
on top of): their gradients are zeroed, so Adam leaves them exactly as they were, and the factors
stay one concatenated ``[fixed | trained]`` pair, computed as one product, as a patch stores them.

In a float16/bfloat16 UNet the adapter's factors are still float32 (master weights: peft's own
upcast, which diffusers' ``add_adapter`` does not do), on the layers' device; peft casts each
layer's input to them and the sum back to the layer's dtype. :meth:`LoRA.edit` returns float32
factors on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from editflow.edits.closed_form import LowRankEdit
from editflow.errors import EditflowError

ADAPTER = "editflow"


class LoRA:
    """The adapter in a UNet: its parameters, an ``active`` switch and the current factors."""

    def __init__(self, unet, names: list[str]):
        self.unet, self.names = unet, names
        layers = [unet.get_submodule(n) for n in names]
        self.up = {n: layer.lora_B[ADAPTER].weight for n, layer in zip(names, layers)}
        self.down = {n: layer.lora_A[ADAPTER].weight for n, layer in zip(names, layers)}

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.up[n] for n in self.names] + [self.down[n] for n in self.names]

    def requires_grad_(self, flag: bool) -> None:
        for p in self.parameters():
            p.requires_grad_(flag)

    @contextmanager
    def active(self, trainable: bool = True) -> Iterator[None]:
        """The UNet computes with the adapter in the block; ``trainable=False``: without gradients to it.

        peft's switch also sets the adapter's ``requires_grad`` (off when disabled); the flags are set
        again here, since the caller's ``backward()`` runs after the block and needs them on.
        """
        self.unet.enable_adapters()
        self.requires_grad_(trainable)
        try:
            yield
        finally:
            self.unet.disable_adapters()
            self.requires_grad_(True)

    def edit(self) -> LowRankEdit:
        f32 = lambda t: t.detach().to("cpu", torch.float32).clone()  # noqa: E731
        return LowRankEdit({n: f32(self.up[n]) for n in self.names}, {n: f32(self.down[n]) for n in self.names})


def _hold(grad: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """``grad`` with its first ``k`` entries along ``dim`` zeroed (Adam then leaves them exactly)."""
    held, free = grad.split([k, grad.shape[dim] - k], dim)
    return torch.cat([torch.zeros_like(held), free], dim)


@contextmanager
def peft_lora(unet, up: dict[str, torch.Tensor], down: dict[str, torch.Tensor],
              fixed: dict[str, int] | None = None) -> Iterator[LoRA]:
    """A trainable LoRA on ``unet``'s layers named in ``up``, starting at ``B_l = up[l]``, ``A_l = down[l]``.

    The first ``fixed[l]`` directions of layer ``l`` (columns of ``B_l``, rows of ``A_l``) get no gradient.
    On exit the peft layers are replaced by the original modules again.
    """
    from peft import LoraConfig
    from peft.tuners.tuners_utils import cast_adapter_dtype

    if getattr(unet, "peft_config", None):
        raise EditflowError("this UNet already carries LoRA adapters; unload them before training a patch")
    names = sorted(up)
    ranks = {n: int(down[n].shape[0]) for n in names}
    rank = max(ranks.values())
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=names, lora_dropout=0.0,
                        rank_pattern={n: r for n, r in ranks.items() if r != rank},
                        alpha_pattern={n: r for n, r in ranks.items() if r != rank})
    flags = [(p, p.requires_grad) for p in unet.parameters()]  # peft marks every base weight frozen
    hooks: list = []
    unet.add_adapter(config, adapter_name=ADAPTER)
    try:
        cast_adapter_dtype(unet, ADAPTER)  # float16/bfloat16 factors -> float32 (before LoRA reads them)
        unet.disable_adapters()
        lora = LoRA(unet, names)
        with torch.no_grad():
            for n in names:
                lora.up[n].copy_(up[n])
                lora.down[n].copy_(down[n])
        lora.requires_grad_(True)
        for n, k in (fixed or {}).items():
            if k:
                hooks.append(lora.up[n].register_hook(lambda g, k=k: _hold(g, k, 1)))
                hooks.append(lora.down[n].register_hook(lambda g, k=k: _hold(g, k, 0)))
        yield lora
    finally:
        for h in hooks:
            h.remove()
        unet.unload_lora()
        for p, flag in flags:
            p.requires_grad_(flag)
