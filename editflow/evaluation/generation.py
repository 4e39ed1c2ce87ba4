"""Seeded generation for evaluation: shards that can fan out, and a cache of the original model's images.

Generation dominates an evaluation. Two things keep it affordable:

* **Shards.** :func:`make_shards` cuts the (prompt, seed) list into independent pieces;
  :func:`generate_sharded` runs them through any ``map``-like callable (the builtin ``map`` in
  process, a Dask client's ``map`` in the flows). Each image has its own seeded generator, so an
  image depends only on its prompt and seed: sharding never changes results.
* **Cache.** The original model's images for a prompt set depend only on (model weights,
  scheduler, sampling settings, prompts, seeds). :class:`ImageCache` stores them as uint8
  safetensors under that key, so re-evaluating another patch on the same base generates half
  as much.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from editflow.models.pipeline import GenerationConfig, generate


@dataclass(frozen=True)
class Shard:
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]


def make_shards(prompts: list[str], seeds: list[int], size: int) -> list[Shard]:
    if size < 1:
        raise ValueError("shard size must be >= 1")
    return [Shard(tuple(prompts[i:i + size]), tuple(seeds[i:i + size])) for i in range(0, len(prompts), size)]


class PipelineShardRunner:
    """Generates a shard with an in-process pipeline (in whatever patch state it is in)."""

    def __init__(self, pipe, config: GenerationConfig, progress=None):
        self.pipe, self.config, self.progress = pipe, config, progress

    def __call__(self, shard: Shard) -> list[Image.Image]:
        return generate(self.pipe, list(shard.prompts), list(shard.seeds), self.config, progress=self.progress)


class ModelShardRunner:
    """Generates a shard with a model it loads itself: what a remote worker (Dask) runs.

    Picklable (it holds names, not weights); each worker process loads the model, and the patch if
    one is named, once (:func:`_loaded`) and reuses it for every shard it is given. ``device`` and
    ``dtype`` are names resolved on the worker (``None``: its ``EDITFLOW_DEVICE`` / ``EDITFLOW_DTYPE``,
    else auto), so a GPU worker draws on its GPU whatever machine sent the shard.
    """

    def __init__(self, model: str | None, patch: str | None, config: GenerationConfig,
                 device: str | None = None, dtype: str | None = None, offload: bool = False):
        self.model, self.patch, self.config = model, patch, config
        self.device, self.dtype, self.offload = device, dtype, offload

    def __call__(self, shard: Shard) -> list[Image.Image]:
        pipe = _loaded(self.model, self.patch, self.device, self.dtype, self.offload)
        return generate(pipe, list(shard.prompts), list(shard.seeds), self.config)


@functools.lru_cache(maxsize=2)
def _loaded(model: str | None, patch: str | None, device: str | None = None, dtype: str | None = None,
            offload: bool = False):
    """Per-process memo of (model, patch, placement) -> pipeline with the patch applied (workers reuse it)."""
    from editflow.edits import Patch
    from editflow.models.device import Placement
    from editflow.models.pipeline import load_pipeline

    place = Placement.resolve(device, dtype)
    pipe = load_pipeline(model, device=place.device, dtype=place.dtype, offload=offload)
    if patch is not None:
        Patch.load(patch).apply(pipe)  # stays applied for this worker's copy
    return pipe


def generate_sharded(run: Callable[[Shard], list[Image.Image]], shards: list[Shard],
                     map_fn: Callable[[Callable, Iterable], Iterable] = map) -> list[Image.Image]:
    """Run every shard through ``map_fn(run, shards)`` and return the images in shard order."""
    return [im for images in map_fn(run, shards) for im in images]


def model_fingerprint(pipe) -> str:
    """sha256 over every weight of the pipeline's modules, its scheduler config, and where it runs
    (device type and dtype: the same weights draw slightly different images on another device or in
    another precision).

    Anything that changes what the model generates changes the key; a patch applied in
    ``merge`` mode changes it too, so fingerprint the base *before* applying one.
    """
    h = hashlib.sha256()
    for name, module in sorted(pipe.components.items()):
        if isinstance(module, torch.nn.Module):
            h.update(name.encode())
            for key, t in module.state_dict().items():
                h.update(key.encode())
                h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    h.update(json.dumps(dict(pipe.scheduler.config), sort_keys=True, default=str).encode())
    device = torch.device(getattr(pipe, "_execution_device", pipe.device))
    h.update(f"placement:{device.type}:{pipe.dtype}".encode())
    return h.hexdigest()


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), np.uint8) for im in images]))


def tensor_to_images(t: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(a) for a in t.numpy()]


class ImageCache:
    """Original-model images on disk, one safetensors file per (model, settings, prompts, seeds).

    Writes are atomic; an unreadable or mismatched entry is regenerated.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(fingerprint: str, config: GenerationConfig, prompts: list[str], seeds: list[int]) -> str:
        settings = {k: v for k, v in asdict(config).items() if k != "batch"}  # batching never changes images
        blob = json.dumps({"model": fingerprint, "config": settings, "prompts": prompts, "seeds": seeds})
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"images-{key}.safetensors"

    def get(self, key: str, n: int) -> list[Image.Image] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            t = load_file(str(path))["images"]
        except Exception:  # truncated or foreign file: regenerate
            return None
        return tensor_to_images(t) if t.ndim == 4 and len(t) == n else None

    def put(self, key: str, images: list[Image.Image]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_name(path.name + ".tmp")
        save_file({"images": images_to_tensor(images).contiguous()}, str(tmp))
        tmp.replace(path)
