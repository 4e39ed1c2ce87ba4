"""Patch hashes of the benchmark concepts (star, kasimir, zorbo) with fixed seeds, for every method
and fine-tuning mode, plus the tensors of the LoRA/kohya exports: a refactor that must not change
results prints the same JSON at both commits (~10 minutes on 2 cores).

    python bench/patch_hashes.py > after.json
    git worktree add /tmp/base REV && (cd /tmp/base && PYTHONPATH=/tmp/base python bench/patch_hashes.py > before.json)
    diff before.json after.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

import editflow
from editflow.jobs.erase import EraseJob, run_erase
from editflow.models.pipeline import load_pipeline

TINY_ESD = {"esd_steps": 4, "trajectories": 2, "sample_steps": 4}
CASES = [  # (concept, method, method options, fine-tuning)
    ("star", "ace", {}, {}), ("kasimir", "ace", {}, {}), ("zorbo", "ace", {}, {}),
    ("star", "uce", {}, {}),
    ("star", "esd-x", TINY_ESD, {}),
    ("zorbo", "esd-u", TINY_ESD, {}),
    *[(c, "ace", {}, {"mode": "minmax", "minmax_steps": 6, "references": 4}) for c in ("star", "kasimir", "zorbo")],
    ("star", "ace", {}, {"mode": "fmn", "steps": 4, "references": 4}),
]


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    from editflow.edits.export import lora_state_dict

    torch.set_num_threads(2)
    print("editflow from", Path(editflow.__file__).parent, file=sys.stderr)
    pipe = load_pipeline()
    out = {}
    for concept, method, options, finetune in CASES:
        patch, _ = run_erase(EraseJob([concept], method, options=options, finetune=finetune), pipe=pipe)
        edit = patch.edit
        down = {"down": edit.down} if edit.shared else {f"down.{n}": t for n, t in edit.down.items()}
        key = f"{concept}/{method}/{finetune.get('mode', '-')}"
        out[key] = digest({**{f"up.{n}": t for n, t in edit.up.items()}, **down})
        if method == "ace" and not finetune:
            for fmt in ("lora", "kohya"):
                out[f"{key}/export-{fmt}"] = digest(lora_state_dict(patch, fmt))
        print(key, out[key], file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
