"""Patches: what an erasure produces, stored as safetensors (no pickle), applied and reverted.

A patch holds low-rank factors per target projection (``ΔW_l = up_l @ down``), an optional gate
(ACE), and metadata: method, config, concepts, token policy, base model identity and a content
hash of the base weights it was computed on. Applying to a base whose hash differs is refused.

Apply modes:
* ``merge``: ``W += ΔW`` in place (the ungated edit; what a LoRA export reproduces);
* ``gated``: the weights stay untouched and the UNet's cross-attention processors add
  ``g(c) ΔW c`` to keys and values, where ``g`` opens only for text features in the concept
  subspace (see :mod:`editflow.edits.gate`).
Both are undone exactly by :meth:`AppliedPatch.revert` (or by leaving the ``with`` block).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from editflow import tensorfile
from editflow.edits.attention import delta_processors, install, restore
from editflow.edits.closed_form import LowRankEdit
from editflow.edits.gate import Gate, layer_delta
from editflow.edits.targets import TargetSpec
from editflow.errors import EditflowError

FORMAT = "editflow-patch/1"


def base_hash(unet: torch.nn.Module, targets: TargetSpec) -> str:
    """sha256 over the names and float32 bytes of the target weights (what a patch edits)."""
    h = hashlib.sha256()
    for name, module in targets.find(unet).items():
        h.update(name.encode())
        h.update(module.weight.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Patch:
    edit: LowRankEdit
    gate: Gate | None = None
    metadata: dict = field(default_factory=dict)
    tokens: list = field(default_factory=list)  # LearnedTokens the erasure learned from images (provenance)

    @property
    def targets(self) -> TargetSpec:
        return TargetSpec(tuple(self.metadata.get("target_patterns", TargetSpec().patterns)),
                          bool(self.metadata.get("targets_read_text", True)))

    # -- storage ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tensors = {f"up.{name}": t.contiguous() for name, t in self.edit.up.items()}
        if self.edit.shared:
            tensors["down"] = self.edit.down.contiguous()
        else:
            tensors.update({f"down.{name}": t.contiguous() for name, t in self.edit.down.items()})
        if self.gate is not None:
            tensors.update({f"gate.{k}": v.contiguous() for k, v in self.gate.tensors().items()})
        for t in self.tokens:
            tensors[f"token.{t.token}"] = t.vectors.detach().float().contiguous()
        meta = {"format": FORMAT, "metadata": json.dumps(self.metadata, sort_keys=True)}
        if self.gate is not None:
            meta["gate"] = json.dumps(self.gate.params())
        return tensorfile.write(path, tensors, meta)  # never leaves a half-written patch behind

    @classmethod
    def load(cls, path: str | Path) -> Patch:
        tensors, meta = tensorfile.read(path, "patch")
        if meta.get("format") != FORMAT:
            raise EditflowError(f"{path} is not an editflow patch (format {meta.get('format')!r})")
        up = {k[3:]: v for k, v in tensors.items() if k.startswith("up.")}
        gate = None
        if "gate" in meta:
            gate = Gate.from_tensors({k[5:]: v for k, v in tensors.items() if k.startswith("gate.")},
                                     json.loads(meta["gate"]))
        from editflow.inversion.tokens import LearnedTokens

        tokens = [LearnedTokens(k[6:], v) for k, v in tensors.items() if k.startswith("token.")]
        down = tensors.get("down")
        if down is None:
            down = {k[5:]: v for k, v in tensors.items() if k.startswith("down.")}
        return cls(LowRankEdit(up=up, down=down), gate, json.loads(meta["metadata"]), tokens)

    # -- application ------------------------------------------------------------------------
    def check_base(self, unet: torch.nn.Module) -> None:
        want = self.metadata.get("base_hash")
        have = base_hash(unet, self.targets)
        if want and want != have:
            raise EditflowError(f"patch was made for base {self.metadata.get('base_model', '?')} "
                                f"(hash {want[:12]}), this model's hash is {have[:12]}")

    def apply(self, pipe, mode: str = "auto") -> AppliedPatch:
        """Apply to ``pipe.unet``; ``mode`` is ``merge``, ``gated`` or ``auto`` (gated if the patch has a gate)."""
        if mode == "auto":
            mode = "gated" if self.gate is not None else "merge"
        if mode not in ("merge", "gated"):
            raise ValueError(f"unknown apply mode {mode!r}; valid: auto, merge, gated")
        if mode == "gated" and self.gate is None:
            raise EditflowError("this patch has no gate; apply it with mode 'merge'")
        if mode == "gated" and not self.edit.shared:
            raise EditflowError("a per-layer (LoRA) patch applies in mode 'merge'")
        unet = pipe.unet
        self.check_base(unet)
        modules = self.targets.find(unet)
        missing = set(self.edit.up) - set(modules)
        if missing:
            raise EditflowError(f"patch targets {sorted(missing)[:3]} are not in this model")
        return AppliedPatch(self, unet, modules, mode)


class AppliedPatch:
    """A patch in effect on a UNet; :meth:`revert` restores the exact original state."""

    def __init__(self, patch: Patch, unet, modules: dict[str, torch.nn.Linear], mode: str):
        self.unet, self.mode = unet, mode
        self._weights: dict[str, torch.Tensor] = {}
        self._processors = None
        if mode == "merge":
            deltas = {}
            for name in patch.edit.up:
                w = modules[name].weight
                delta = patch.edit.delta(name).to(w.dtype)
                new = w.detach() + delta
                if not torch.isfinite(new).all():
                    raise EditflowError(f"applying the patch makes {name} non-finite; nothing was changed")
                deltas[name] = new
            for name, new in deltas.items():  # check everything first, then write
                self._weights[name] = modules[name].weight.detach().clone()
                with torch.no_grad():
                    modules[name].weight.copy_(new)
        else:
            self._processors = install(unet, delta_processors(
                lambda name: layer_delta(name, patch.edit.up, patch.edit.down, patch.gate)))

    def revert(self) -> None:
        if self.mode == "merge":
            modules = dict(self.unet.named_modules())
            with torch.no_grad():
                for name, w in self._weights.items():
                    modules[name].weight.copy_(w)
            self._weights.clear()
        elif self._processors is not None:
            restore(self.unet, self._processors)
            self._processors = None

    def __enter__(self) -> AppliedPatch:
        return self

    def __exit__(self, *exc) -> None:
        self.revert()
