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

A file is checked when loaded (its schema: header keys, tensor names, 2-D floating factors of
matching ranks, every value finite) and again against the model it is applied to (target layers
present, factor shapes equal to the weights'), so a foreign or damaged file is one clear error.

Precision and base identity across float32/float16/bfloat16 (``base_hashes``, ``base_dtype``,
what :meth:`Patch.check_base` accepts): ``docs/patches.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import editflow
from editflow import tensorfile
from editflow.edits.attention import delta_processors, install, restore
from editflow.edits.closed_form import LowRankEdit
from editflow.edits.gate import Gate, layer_delta
from editflow.edits.targets import TargetSpec
from editflow.errors import EditflowError

if TYPE_CHECKING:
    from editflow.edits.request import EraseRequest

FORMAT = "editflow-patch/1"


DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
BY_NAME = {n: d for d, n in DTYPE_NAMES.items()}


def base_hash(unet: torch.nn.Module, targets: TargetSpec, dtype: torch.dtype | None = None) -> str:
    """sha256 over the names and float32 bytes of the target weights (what a patch edits): as they
    are (``dtype=None``), or as they would be in ``dtype`` (cast to it, then back to float32)."""
    h = hashlib.sha256()
    for name, module in targets.find(unet).items():
        w = module.weight.detach()
        if dtype is not None:
            w = w.to(dtype)
        h.update(name.encode())
        h.update(w.to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def weights_dtype(unet: torch.nn.Module, targets: TargetSpec) -> torch.dtype:
    """The one dtype of the target weights (an error names them when they are mixed)."""
    dtypes = {m.weight.dtype for m in targets.find(unet).values()}
    if len(dtypes) != 1:
        raise EditflowError(f"the patch's target weights have mixed dtypes {sorted(map(str, dtypes))}; "
                            "load the model in one dtype")
    return dtypes.pop()


def base_identity(unet: torch.nn.Module, targets: TargetSpec) -> dict:
    """The metadata that identifies the base (module docstring): ``base_hash``, ``base_hashes``, ``base_dtype``."""
    dtype = weights_dtype(unet, targets)
    name = DTYPE_NAMES.get(dtype)
    if name is None:
        raise EditflowError(f"patches are computed on float32, float16 or bfloat16 models, not {dtype}")
    views = list(DTYPE_NAMES) if dtype == torch.float32 else [dtype]
    hashes = {DTYPE_NAMES[d]: base_hash(unet, targets, None if d == dtype else d) for d in views}
    return {"base_hash": hashes[name], "base_hashes": hashes, "base_dtype": name}


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
        f32 = lambda t: t.detach().to("cpu", torch.float32).contiguous()  # noqa: E731  (always stored float32)
        tensors = {f"up.{name}": f32(t) for name, t in self.edit.up.items()}
        if self.edit.shared:
            tensors["down"] = f32(self.edit.down)
        else:
            tensors.update({f"down.{name}": f32(t) for name, t in self.edit.down.items()})
        if self.gate is not None:
            tensors.update({f"gate.{k}": f32(v) for k, v in self.gate.tensors().items()})
        for t in self.tokens:
            tensors[f"token.{t.token}"] = t.vectors.detach().float().contiguous()
        meta = {"format": FORMAT, "metadata": json.dumps(self.metadata, sort_keys=True)}
        if self.gate is not None:
            meta["gate"] = json.dumps(self.gate.params())
        return tensorfile.write(path, tensors, meta)  # never leaves a half-written patch behind

    @classmethod
    def load(cls, path: str | Path) -> Patch:
        """Read and check a patch file: every problem is an :class:`EditflowError` naming the file."""
        tensors, meta = tensorfile.read(path, "patch")
        if meta.get("format") != FORMAT:
            raise EditflowError(f"{path} is not an editflow patch (format {meta.get('format')!r})")
        metadata = _json_header(path, meta, "metadata", required=True)
        gate_params = _json_header(path, meta, "gate", required=False)
        stray = sorted(k for k in tensors if k != "down" and not k.startswith(("up.", "down.", "gate.", "token.")))
        if stray:
            raise EditflowError(f"{path}: unexpected tensors {stray[:3]} in a patch")
        for k, v in tensors.items():
            if not v.is_floating_point():
                raise EditflowError(f"{path}: tensor {k} is {v.dtype}, not floating point")
            if not torch.isfinite(v).all():
                raise EditflowError(f"{path}: tensor {k} holds NaN or Inf values; refusing the patch")
        tensors = {k: v.float() for k, v in tensors.items()}  # a patch computes in float32 (half-precision files too)
        up = {k[3:]: v for k, v in tensors.items() if k.startswith("up.")}
        per_layer = {k[5:]: v for k, v in tensors.items() if k.startswith("down.")}
        down = tensors.get("down")
        if down is not None and per_layer:
            raise EditflowError(f"{path}: holds both a shared 'down' and per-layer 'down.*' tensors")
        if down is None:
            if not per_layer:
                raise EditflowError(f"{path}: no 'down' tensor (a patch holds up.* and down factors)")
            if set(per_layer) != set(up):
                odd = sorted(set(per_layer) ^ set(up))
                raise EditflowError(f"{path}: up.* and down.* name different layers: {odd[:3]}")
            down = per_layer
        if not up:
            raise EditflowError(f"{path}: no up.* tensors (a patch holds one per edited layer)")
        edit = LowRankEdit(up=up, down=down)
        for name, u in up.items():
            d = edit.down_for(name)
            if u.ndim != 2 or d.ndim != 2 or u.shape[1] != d.shape[0]:
                raise EditflowError(f"{path}: factors of {name} have shapes {tuple(u.shape)} and {tuple(d.shape)}; "
                                    "want (out, r) and (r, in)")
        gate_tensors = {k[5:]: v for k, v in tensors.items() if k.startswith("gate.")}
        gate = None
        if gate_params is not None:
            gate = _gate(path, gate_tensors, gate_params, edit)
        elif gate_tensors:
            raise EditflowError(f"{path}: gate tensors without the header's 'gate' parameters")
        from editflow.models.tokens import LearnedTokens

        tokens = []
        for k, v in tensors.items():
            if k.startswith("token."):
                if v.ndim != 2:
                    raise EditflowError(f"{path}: token embedding {k} has shape {tuple(v.shape)}; want (vectors, dim)")
                tokens.append(LearnedTokens(k[6:], v))
        return cls(edit, gate, metadata, tokens)

    # -- application ------------------------------------------------------------------------
    def base_hashes(self) -> dict[str, str]:
        """The recorded base hashes by dtype name (an older patch: its float32 ``base_hash``)."""
        hashes = self.metadata.get("base_hashes")
        if isinstance(hashes, dict) and hashes:
            return {str(k): str(v) for k, v in hashes.items() if v}
        want = self.metadata.get("base_hash")
        return {"float32": str(want)} if want else {}

    def check_base(self, unet: torch.nn.Module) -> None:
        """Refuse a model that is not the patch's base, in whatever dtype it is loaded (module docstring)."""
        recorded = self.base_hashes()
        if not recorded:
            return
        dtype = weights_dtype(unet, self.targets)
        name = DTYPE_NAMES.get(dtype)
        if name in recorded:
            view = None
        elif dtype == torch.float32 and any(n in recorded for n in ("bfloat16", "float16")):
            # a float32 model rounds its own weights to the dtype the patch was computed in
            name = next(n for n in ("bfloat16", "float16") if n in recorded)
            view = BY_NAME[name]
        else:
            fits = " or ".join(["float32"] + sorted(n for n in recorded if n != "float32"))
            raise EditflowError(f"the patch records its base's hash in {', '.join(sorted(recorded))} only and this "
                                f"model is loaded in {name or dtype}, so the base cannot be checked; load the model "
                                f"with --dtype {fits} to apply the patch")
        want, have = recorded[name], base_hash(unet, self.targets, view)
        if want != have:
            raise EditflowError(f"patch was made for base {self.metadata.get('base_model', '?')} "
                                f"(hash {want[:12]} in {name}), this model's hash is {have[:12]}")

    def _mode(self, mode: str) -> str:
        if mode == "auto":
            mode = "gated" if self.gate is not None else "merge"
        if mode not in ("merge", "gated"):
            raise ValueError(f"unknown apply mode {mode!r}; valid: auto, merge, gated")
        if mode == "gated" and self.gate is None:
            raise EditflowError("this patch has no gate; apply it with mode 'merge'")
        if mode == "gated" and not self.edit.shared:
            raise EditflowError("a per-layer (LoRA) patch applies in mode 'merge'")
        return mode

    def check(self, unet: torch.nn.Module, mode: str = "auto") -> dict[str, torch.nn.Module]:
        """Refuse a patch that does not fit ``unet`` (base hash, target layers, factor and gate shapes)
        before anything is changed; returns the target modules by name."""
        mode = self._mode(mode)
        self.check_base(unet)
        modules = self.targets.find(unet)
        missing = set(self.edit.up) - set(modules)
        if missing:
            raise EditflowError(f"patch targets {sorted(missing)[:3]} are not in this model")
        for name, up in self.edit.up.items():
            w = modules[name].weight
            shape = (up.shape[0], self.edit.down_for(name).shape[1])
            if tuple(w.shape) != shape:
                raise EditflowError(f"patch edits {name} as {shape[0]}x{shape[1]}; this model's weight is "
                                    f"{w.shape[0]}x{w.shape[1]} (a patch for another model?)")
            if mode == "gated" and self.gate.basis.shape[0] != w.shape[1]:
                raise EditflowError(f"the patch's gate reads {self.gate.basis.shape[0]}-d text features; {name} "
                                    f"reads {w.shape[1]}-d (a patch for another model?)")
        return modules

    def apply(self, pipe, mode: str = "auto") -> AppliedPatch:
        """Apply to ``pipe.unet``; ``mode`` is ``merge``, ``gated`` or ``auto`` (gated if the patch has a gate)."""
        mode = self._mode(mode)
        modules = self.check(pipe.unet, mode)
        return AppliedPatch(self, pipe.unet, modules, mode)


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
                # W + ΔW in float32 on the weight's device, rounded once to the weight's dtype
                delta = patch.edit.delta(name).to(w.device, torch.float32)
                new = (w.detach().float() + delta).to(w.dtype)
                if not torch.isfinite(new).all():
                    raise EditflowError(f"applying the patch makes {name} non-finite in {w.dtype}; "
                                        "nothing was changed")
                deltas[name] = new
            for name, new in deltas.items():  # check everything first, then write
                self._weights[name] = modules[name].weight.detach().clone()
                with torch.no_grad():
                    modules[name].weight.copy_(new)
        else:  # float32 factors, moved once to the UNet's device (the delta is computed in float32 there)
            device = next(iter(modules.values())).weight.device
            up = {n: u.to(device, torch.float32) for n, u in patch.edit.up.items()}
            down = patch.edit.down.to(device, torch.float32)
            gate = patch.gate
            if gate is not None:
                gate = Gate(gate.basis.to(device, torch.float32), gate.tau, gate.temperature)
            self._processors = install(unet, delta_processors(lambda name: layer_delta(name, up, down, gate)))

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


def _json_header(path, meta: dict[str, str], key: str, required: bool):
    if key not in meta:
        if required:
            raise EditflowError(f"{path} is not a complete editflow patch: its header has no {key!r}")
        return None
    try:
        value = json.loads(meta[key])
    except ValueError:
        raise EditflowError(f"{path}: the header's {key!r} is not valid JSON") from None
    if not isinstance(value, dict):
        raise EditflowError(f"{path}: the header's {key!r} must be a JSON object")
    return value


def _gate(path, tensors: dict[str, torch.Tensor], params: dict, edit: LowRankEdit) -> Gate:
    basis = tensors.get("basis")
    if basis is None or set(tensors) != {"basis"}:
        raise EditflowError(f"{path}: a gated patch holds one gate tensor, 'gate.basis' (found "
                            f"{sorted('gate.' + k for k in tensors)[:3]})")
    if basis.ndim != 2 or (edit.shared and basis.shape[0] != edit.down.shape[1]):
        raise EditflowError(f"{path}: gate.basis has shape {tuple(basis.shape)}; want (in, g) with in = "
                            f"{edit.down.shape[1] if edit.shared else 'the layers input size'}")
    try:
        tau, temperature = float(params["tau"]), float(params["temperature"])
    except (KeyError, TypeError, ValueError):
        raise EditflowError(f"{path}: the gate needs numeric 'tau' and 'temperature' (got {params})") from None
    if not (math.isfinite(tau) and math.isfinite(temperature) and temperature > 0):
        raise EditflowError(f"{path}: gate tau {tau} and temperature {temperature} must be finite, "
                            "temperature > 0")
    return Gate(basis, tau, temperature)


def patch_metadata(pipe, request: EraseRequest, method: str, config, targets: TargetSpec,
                   extra: dict | None = None) -> dict:
    """What a method's patch records of its making (``Patch.metadata``): method, config, the request's
    concepts and prompts, target modules, the base model's name and weight hashes, editflow's
    version; ``extra`` is the method's own. In JSON-normal form, as a saved patch reads it back."""
    meta = {
        "method": method,
        "config": asdict(config),
        "concepts": [asdict(c) for c in request.concepts],
        "preserve": list(request.preserve),
        "templates": list(request.templates),
        **({"kept": list(request.kept)} if request.kept else {}),
        "token_policy": request.token_policy.value,
        "target_patterns": list(targets.patterns),
        "base_model": str(getattr(pipe, "name_or_path", "") or pipe.config.get("_name_or_path", "")),
        **base_identity(pipe.unet, targets),  # base_hash, base_hashes per dtype, base_dtype
        "editflow_version": editflow.__version__,
        **(extra or {}),
    }
    return json.loads(json.dumps(meta))  # JSON-normal form: what a saved patch reads back
