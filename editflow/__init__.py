"""editflow: erase concepts from text-to-image diffusion models, prove it, ship the patch."""

__version__ = "0.1.0"
