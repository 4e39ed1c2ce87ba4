"""Erasure quality with the gradient stage, side by side on the same model, prompts and seeds:
ACE + fine-tuning (adv, fmn, minmax) vs ACE closed form (anchor targets, gated; zero targets,
ungated) vs UCE vs ESD-x/u, including the concept-inversion attack (best of 3 tries per concept).

    python bench/finetune_quality.py [--concepts star kasimir zorbo] [--variants ...] [--images 24] [--attack-steps 150]

Each patch is computed and judged as `editflow erase --patch-only [--finetune ...]` and
`editflow eval` do (``run_erase``, ``run_eval`` with the attack on). Specificity is the
evaluation's (neighbours and distant concepts together, after / before). Prints one markdown
table; results go to docs/benchmarks.md ("Fine-tuning and the inversion attack").
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from editflow.edits.erase import EraseJob, run_erase
from editflow.evaluation.run import EvalJob, run_eval
from editflow.models.pipeline import load_pipeline

VARIANTS = {  # name: (method, its options, fine-tuning)
    "ace+minmax": ("ace", {}, {"mode": "minmax"}),
    "ace+adv": ("ace", {}, {"mode": "adv"}),
    "ace+fmn": ("ace", {}, {"mode": "fmn"}),
    "ace": ("ace", {}, {}),
    "ace-zero": ("ace", {"target": "zero", "gated": False, "guidance": 2.0}, {}),
    "uce": ("uce", {}, {}),
    "esd-x": ("esd-x", {}, {}),
    "esd-u": ("esd-u", {}, {}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", nargs="+", default=["star", "kasimir", "zorbo"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--attack-steps", type=int, default=150,
                    help="the attack's inversion steps (400: the fourth round in docs/benchmarks.md)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    work = Path(tempfile.mkdtemp(prefix="editflow-bench-"))
    rows = []
    for concept in args.concepts:
        for variant in args.variants:
            method, options, finetune = VARIANTS[variant]
            patch, _ = run_erase(EraseJob([concept], method, options=options, finetune=finetune), pipe)
            path = patch.save(work / f"{concept}-{variant}.safetensors")
            outcome = run_eval(EvalJob(patch=str(path), images=args.images, cache_dir=str(work / "cache"),
                                       attack_steps=args.attack_steps), pipe)
            m = outcome.result.metrics

            def fmt(k, m=m):
                return "—" if m.get(k) is None else f"{m[k]:.3f}"

            failed = [c.metric for c in outcome.gates.failures()]
            rows.append(f"| {concept} | {variant} | {patch.metadata['seconds']:.1f} | {fmt('erasure_rate')} | "
                        f"{fmt('leakage')} | {fmt('specificity')} | {fmt('attack_success')} | "
                        f"{fmt('attack_baseline')} | "
                        f"{fmt('memorization_score')} | {fmt('image_similarity_preserved')} | "
                        f"{'pass' if not failed else 'FAIL: ' + ', '.join(failed)} |")
            print(rows[-1], flush=True)
    print("\n| concept | method | erase s | erasure rate | leakage | specificity | attack success | before inversion "
          "| memorization | image sim. | gates |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
