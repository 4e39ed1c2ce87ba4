"""Seeded batches of world scenes: images, captions and labels come out together."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from editflow.world.captions import Scene, caption, sample_scene
from editflow.world.render import render
from editflow.world.spec import WorldSpec


@dataclass
class WorldBatch:
    scenes: list[Scene]
    captions: list[str]
    images: torch.Tensor  # (N, 3, H, W) float32 in [-1, 1]

    def labels(self, family: str) -> list[str]:
        return [s.labels()[family] for s in self.scenes]


def to_tensor(images) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) float32 in [-1, 1]."""
    arr = np.stack([np.asarray(im, np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def sample_batch(spec: WorldSpec, n: int, seed: int, **fixed) -> WorldBatch:
    """Render ``n`` scenes from ``seed``; keyword labels (``object=``, ``identity=`` ...) are fixed."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, spec, **fixed) for _ in range(n)]
    captions = [caption(s, rng, spec) for s in scenes]
    return WorldBatch(scenes, captions, to_tensor(render(s, spec) for s in scenes))
