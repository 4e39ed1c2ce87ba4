"""UCE: the closed-form edit of every ``attn2.to_k``/``to_v`` with anchor or empty guides,
exactly as published (see :mod:`editflow.edits.closed_form` for the equation and its
shared-factor solve)."""

from __future__ import annotations

from editflow.edits.closed_form import solve_edit
from editflow.edits.patch import Patch
from editflow.edits.request import EraseRequest
from editflow.edits.streaming import PreserveCache, stream_statistics
from editflow.edits.targets import TargetSpec
from editflow.edits.uce.config import UCEConfig


def metadata(pipe, request: EraseRequest, method: str, config, targets: TargetSpec, extra: dict | None = None) -> dict:
    import json
    from dataclasses import asdict

    import editflow
    from editflow.edits.patch import base_identity

    meta = {
        "method": method,
        "config": asdict(config),
        "concepts": [asdict(c) for c in request.concepts],
        "preserve": list(request.preserve),
        "templates": list(request.templates),
        **({"kept": list(request.kept)} if request.kept else {}),
        "token_policy": request.token_policy.value,
        "target_patterns": list(targets.patterns),
        "base_model": str(getattr(pipe, "name_or_path", "") or pipe.config.get("_name_or_path", "")),
        **base_identity(pipe.unet, targets),  # base_hash, base_hashes per dtype, base_dtype
        "editflow_version": editflow.__version__,
        **(extra or {}),
    }
    return json.loads(json.dumps(meta))  # JSON-normal form: what a saved patch reads back


class UCE:
    name = "uce"
    config_class = UCEConfig

    def compute(self, pipe, request: EraseRequest, config: UCEConfig, targets: TargetSpec | None = None,
                cache: PreserveCache | None = None, progress=None) -> Patch:
        targets = targets or TargetSpec()
        weights = {n: m.weight.detach() for n, m in targets.find(pipe.unet).items()}
        streamed = stream_statistics(pipe, request, cache=cache, progress=progress)
        edit = solve_edit(weights, streamed.stats, config.lam, config.erase_scale, config.preserve_scale)
        return Patch(edit, None, metadata(pipe, request, self.name, config, targets, {"rank": edit.rank}))
