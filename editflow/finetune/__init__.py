"""The short gradient stage after a closed-form erasure: trains only the patch (its low-rank
factors), with Forget-Me-Not losses and adversarially augmented prompts."""

from editflow.finetune.config import FinetuneConfig, FinetuneMode
from editflow.finetune.run import finetune

__all__ = ["FinetuneConfig", "FinetuneMode", "finetune"]
