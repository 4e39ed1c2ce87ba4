"""Concept inversion (textual inversion, Gal et al. 2023): learn token embeddings from images.

Used to name concepts that words miss (erase targets) and to attack erased models (Pham et al.
2023, "Circumventing Concept Erasure Methods for Text-to-Image Generative Models").
"""

from editflow.inversion.images import load_images
from editflow.inversion.invert import InversionConfig, invert
from editflow.models.tokens import LearnedTokens, learned_tokens

__all__ = ["InversionConfig", "LearnedTokens", "invert", "learned_tokens", "load_images"]
