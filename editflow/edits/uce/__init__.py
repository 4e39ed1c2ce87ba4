"""UCE (Gandikota et al., "Unified Concept Editing in Diffusion Models", WACV 2024)."""

from editflow.edits.registry import register
from editflow.edits.uce.config import UCEConfig
from editflow.edits.uce.method import UCE

register(UCE())

__all__ = ["UCE", "UCEConfig"]
