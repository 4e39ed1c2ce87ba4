"""UCE: the closed-form edit of every ``attn2.to_k``/``to_v`` with anchor or empty guides,
exactly as published (see :mod:`editflow.edits.closed_form` for the equation and its
shared-factor solve)."""

from __future__ import annotations

from editflow.edits.closed_form import solve_edit
from editflow.edits.patch import Patch, patch_metadata
from editflow.edits.registry import CLOSED_FORM
from editflow.edits.request import EraseRequest
from editflow.edits.streaming import PreserveCache, stream_statistics
from editflow.edits.targets import TargetSpec
from editflow.edits.uce.config import UCEConfig


class UCE:
    name = "uce"
    kind = CLOSED_FORM
    config_class = UCEConfig

    def compute(self, pipe, request: EraseRequest, config: UCEConfig, targets: TargetSpec | None = None,
                cache: PreserveCache | None = None, progress=None) -> Patch:
        targets = targets or TargetSpec()
        weights = {n: m.weight.detach() for n, m in targets.find(pipe.unet).items()}
        streamed = stream_statistics(pipe, request, cache=cache, progress=progress)
        edit = solve_edit(weights, streamed.stats, config.lam, config.erase_scale, config.preserve_scale)
        return Patch(edit, None, patch_metadata(pipe, request, self.name, config, targets, {"rank": edit.rank}))
