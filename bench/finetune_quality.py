"""Erasure quality with the gradient stage, side by side on the same model, prompts and seeds:
ACE + fine-tuning (adv, fmn, minmax) vs ACE closed form (anchor targets, gated; zero targets,
ungated) vs UCE vs ESD-x/u, including the concept-inversion attack (best of 3 tries per concept).

    python bench/finetune_quality.py [--concepts star kasimir zorbo] [--variants ...] [--images 24] [--attack-steps 150]
        [--preserve-images 16] [--seeds 0 1 2] [--gates configs/gates/robust.yaml] [--set attackers=3 ...]

Each patch is computed and judged as `editflow erase --patch-only [--finetune ...]` and
`editflow eval` do (``run_erase``, ``run_eval`` with the attack on). Specificity is the
evaluation's (neighbours and distant concepts together, after / before), on 16 images per
preserved concept (``--preserve-images``; the evaluation's default of 6 and 4 gives 34-76 preserved
images, where one lost picture is 1.3-3 % and 98 % cannot be told from 100 %). ``--seeds`` trains the
variants that train (fine-tuning, ESD) once per seed; ``--set`` overrides fine-tuning settings.
Prints one markdown table, then per concept and variant the median over the seeds against the
fine-tuning issue's goal (attack success <= 0.20, erasure <= 0.02, specificity >= 0.98); results
go to docs/benchmarks.md ("Fine-tuning and the inversion attack").

The issue's goal at a 400-step attack, three training seeds, the minmax rows (~10 minutes each):

    python bench/finetune_quality.py --variants ace+minmax --attack-steps 400 --seeds 0 1 2 \
        --gates configs/gates/robust.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch

from editflow.finetune import FinetuneConfig
from editflow.jobs.erase import EraseJob, run_erase
from editflow.jobs.evaluate import EvalJob, run_eval
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
GOAL = {"attack_success": ("max", 0.20), "erasure_rate": ("max", 0.02), "specificity": ("min", 0.98)}


def parse_value(text: str):
    """``--set`` values: int, float, else the string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def goal_summary(results: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Markdown rows: per (concept, variant), each goal metric's median over its seeds and whether
    all three medians meet :data:`GOAL`."""
    rows = []
    for (concept, variant), runs in results.items():
        cells, met = [], True
        for key, (side, bound) in GOAL.items():
            values = [r[key] for r in runs if r.get(key) is not None]
            if not values:
                cells.append("—")
                met = False
                continue
            mid = statistics.median(values)
            met &= mid <= bound if side == "max" else mid >= bound
            cells.append(f"{mid:.3f} ({' / '.join(f'{v:.3f}' for v in values)})")
        verdict = "met" if met else "not met"
        rows.append(f"| {concept} | {variant} | {len(runs)} | " + " | ".join(cells) + f" | {verdict} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", nargs="+", default=["star", "kasimir", "zorbo"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--preserve-images", type=int, default=16,
                    help="evaluation images per preserved concept (16: ~110-220 preserved images, enough to resolve "
                         "the 2 %% specificity goal; the evaluation's own default of a quarter of --images is not)")
    ap.add_argument("--attack-steps", type=int, default=150,
                    help="the attack's inversion steps (400: the fourth round in docs/benchmarks.md)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="training seeds of the variants that train (fine-tuning, ESD); closed forms run once")
    ap.add_argument("--gates", default=None, help="gate thresholds (YAML); default: the evaluation's")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="fine-tuning settings (FinetuneConfig fields) for the fine-tuned variants")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    overrides = {}
    known = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"mode", "seed"}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            ap.error(f"--set takes KEY=VALUE with KEY one of {sorted(known)}, got {item!r}")
        overrides[key] = parse_value(value)
    try:  # a bad value fails here, before any patch is computed
        FinetuneConfig(mode="minmax", **overrides)
    except ValueError as exc:
        ap.error(f"--set: {exc}")
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    work = Path(tempfile.mkdtemp(prefix="editflow-bench-"))
    rows, results = [], {}
    for concept in args.concepts:
        for variant in args.variants:
            method, options, finetune = VARIANTS[variant]
            esd = method.startswith("esd")
            trains = bool(finetune) or esd
            for seed in args.seeds if trains else args.seeds[:1]:
                ft = {**finetune, **overrides, "seed": seed} if finetune else {}
                opts = {**options, "seed": seed} if esd else options
                patch, _ = run_erase(EraseJob([concept], method, options=opts, finetune=ft), pipe)
                path = patch.save(work / f"{concept}-{variant}-{seed}.safetensors")
                outcome = run_eval(EvalJob(patch=str(path), images=args.images, cache_dir=str(work / "cache"),
                                           attack_steps=args.attack_steps, gates=args.gates,
                                           preserve_images=args.preserve_images), pipe)
                m = outcome.result.metrics
                results.setdefault((concept, variant), []).append(m)

                def fmt(k, m=m):
                    return "—" if m.get(k) is None else f"{m[k]:.3f}"

                failed = [c.metric for c in outcome.gates.failures()]
                rows.append(f"| {concept} | {variant} | {seed if trains else '—'} | {patch.metadata['seconds']:.1f} | "
                            f"{fmt('erasure_rate')} | {fmt('leakage')} | {fmt('specificity')} | "
                            f"{fmt('attack_success')} | {fmt('attack_baseline')} | "
                            f"{fmt('memorization_score')} | {fmt('image_similarity_preserved')} | "
                            f"{'pass' if not failed else 'FAIL: ' + ', '.join(failed)} |")
                print(rows[-1], flush=True)
    print("\n| concept | method | seed | erase s | erasure rate | leakage | specificity | attack success "
          "| before inversion | memorization | image sim. | gates |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print("\n".join(rows))
    goal = ", ".join(f"{k} {'<=' if side == 'max' else '>='} {bound}" for k, (side, bound) in GOAL.items())
    print(f"\nMedian over seeds against the goal ({goal}):\n")
    print("| concept | method | seeds | attack success | erasure rate | specificity | goal |")
    print("|---|---|---:|---|---|---|---|")
    print("\n".join(goal_summary(results)))


if __name__ == "__main__":
    main()
