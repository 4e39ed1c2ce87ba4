"""How many inversion steps does the default evaluation's attack need? Attack success (best of the
tries) and the untrained baseline for several step counts and learning rates, on the same ACE
patches, references, seeds and sampler.

    python bench/attack_budget.py [--concepts star kasimir zorbo naked] [--variants 150:0.02 100:0.02 50:0.02 50:0.05]

Each variant is ``steps:lr`` of the attacker's inversion (3 tries inverted together, batch 8 each,
as `editflow eval`); the references are the original model's images of the concept's target
prompts, drawn once. Prints a markdown table; results go to docs/benchmarks.md ("Attack budget").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from editflow.edits.patch import Patch
from editflow.evaluation.attack import AttackConfig, attack_result
from editflow.evaluation.detectors import WorldDetector
from editflow.inversion import InversionConfig
from editflow.jobs.erase import EraseJob, run_erase
from editflow.jobs.evaluate import EvalJob, run_eval
from editflow.models.evaluator import Evaluator
from editflow.models.pipeline import GenerationConfig, embedded_dir, load_pipeline
from editflow.world import DEFAULT_WORLD


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", nargs="+", default=["star", "kasimir", "zorbo", "naked"])
    ap.add_argument("--variants", nargs="+", default=["150:0.02", "100:0.02", "50:0.02", "50:0.05"])
    ap.add_argument("--sampler-steps", type=int, default=None, help="default: the evaluation's")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe, judge = load_pipeline(), Evaluator.from_dir(embedded_dir() / "evaluator")
    work = Path(tempfile.mkdtemp(prefix="editflow-attack-"))
    rows = []
    for concept in args.concepts:
        patch, _ = run_erase(EraseJob([concept], "ace"), pipe)
        path = patch.save(work / f"{concept}.safetensors")
        outcome = run_eval(EvalJob(patch=str(path), attack=False, steps=args.sampler_steps,
                                   out=str(work / f"{concept}-eval")), pipe)
        result = outcome.result
        detector = WorldDetector(judge, DEFAULT_WORLD)
        anchors = {c["name"]: c.get("anchor", "") for c in patch.metadata.get("concepts", [])}
        sampler = GenerationConfig(steps=args.sampler_steps) if args.sampler_steps else GenerationConfig()
        for variant in args.variants:
            steps, lr = variant.split(":")
            config = AttackConfig(inversion=InversionConfig(steps=int(steps), lr=float(lr), seed=4242))
            t = time.perf_counter()
            attack_result(pipe, result, Patch.load(path), detector, judge, anchors, config, sampler)
            run = result.attacks[0]
            rows.append(f"| {concept} | {steps} | {lr} | {result.metrics['attack_success']:.3f} | "
                        f"{' / '.join(f'{x:.3f}' for x in run['tries'])} | {result.metrics['attack_baseline']:.3f} | "
                        f"{run['loss_last']:.4f} | {time.perf_counter() - t:.0f} |")
            print(rows[-1], flush=True)
    print("\n| concept | steps | lr | attack success (best) | tries | baseline | loss (last 10 %) | seconds |")
    print("|---|---:|---:|---:|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
