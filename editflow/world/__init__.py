"""The embedded procedural world: concepts, captions and deterministic rendering."""

from editflow.world.captions import Scene, caption, sample_scene
from editflow.world.dataset import WorldBatch, sample_batch, to_tensor
from editflow.world.render import render
from editflow.world.spec import DEFAULT_WORLD, FAMILIES, Concept, WorldSpec

__all__ = [
    "DEFAULT_WORLD",
    "FAMILIES",
    "Concept",
    "Scene",
    "WorldBatch",
    "WorldSpec",
    "caption",
    "render",
    "sample_batch",
    "sample_scene",
    "to_tensor",
]
