"""The short gradient stage after a closed-form erasure: trains only the patch (its low-rank
factors), with Forget-Me-Not losses and adversarially augmented prompts, or a LoRA over it (minmax
against inversion attackers, implied against what a context implies)."""

from editflow.finetune.config import FinetuneConfig, FinetuneMode
from editflow.finetune.run import finetune, resolve_mode

__all__ = ["FinetuneConfig", "FinetuneMode", "finetune", "resolve_mode"]
