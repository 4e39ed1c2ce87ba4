"""Closed-form concept erasure: methods compute patches; patches apply and revert.

Importing this package registers the built-in methods (``uce``, ``ace``, ``esd-x``).
"""

from editflow.edits import ace, esd, uce  # noqa: F401  (registers the methods)
from editflow.edits.patch import Patch, base_hash
from editflow.edits.registry import available, get_method
from editflow.edits.request import ConceptSpec, EraseRequest

__all__ = ["ConceptSpec", "EraseRequest", "Patch", "available", "base_hash", "get_method"]
