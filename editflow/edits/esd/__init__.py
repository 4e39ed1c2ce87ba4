"""ESD: erasing concepts by fine-tuning with negative guidance (the fine-tuning baseline)."""

from editflow.edits.esd.config import ESDConfig
from editflow.edits.esd.method import ESD, esd_target
from editflow.edits.registry import register

register(ESD("esd-x"))
register(ESD("esd-u"))

__all__ = ["ESD", "ESDConfig", "esd_target"]
