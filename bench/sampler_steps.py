"""Does the embedded model's default evaluation need 25 sampler steps? Generator fidelity and every
gate metric of the default evaluation at several DPM-Solver++ step counts, on the same prompts and seeds.

    python bench/sampler_steps.py [--steps 25 15 10] [--concepts star kasimir zorbo naked]

One ACE patch per concept (what `editflow erase --patch-only` computes) is judged by the default
`editflow eval` (attack included) at each step count; the original images are drawn at that step
count too. Fidelity is `editflow world check`'s generator fidelity. Prints markdown tables; results
go to docs/benchmarks.md ("Sampler steps").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from editflow.evaluation.world_check import generator_fidelity
from editflow.jobs.erase import EraseJob, run_erase
from editflow.jobs.evaluate import EvalJob, run_eval
from editflow.models.evaluator import Evaluator
from editflow.models.pipeline import GenerationConfig, embedded_dir, load_pipeline
from editflow.world import DEFAULT_WORLD

METRICS = ("erasure_rate", "leakage", "leakage_implicit", "specificity_neighbours", "specificity_distant",
           "image_similarity_preserved", "attack_success", "attack_baseline")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", nargs="+", type=int, default=[25, 15, 10])
    ap.add_argument("--concepts", nargs="+", default=["star", "kasimir", "zorbo", "naked"])
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe, judge = load_pipeline(), Evaluator.from_dir(embedded_dir() / "evaluator")
    work = Path(tempfile.mkdtemp(prefix="editflow-steps-"))
    fidelity, gates = {}, []
    for steps in args.steps:
        t = time.perf_counter()
        scores = generator_fidelity(pipe, judge, DEFAULT_WORLD, args.per_class, GenerationConfig(steps=steps))
        fidelity[steps] = ({k: s.accuracy for k, s in scores.items()}, time.perf_counter() - t)
        print(steps, fidelity[steps], flush=True)
    patches = {}
    for concept in args.concepts:
        patch, _ = run_erase(EraseJob([concept], "ace"), pipe)
        patches[concept] = patch.save(work / f"{concept}.safetensors")
    for concept, path in patches.items():
        for steps in args.steps:
            t = time.perf_counter()
            out = run_eval(EvalJob(patch=str(path), steps=steps, out=str(work / f"{concept}-{steps}")), pipe)
            m = out.result.metrics
            row = " | ".join("—" if m.get(k) is None else f"{m[k]:.3f}" for k in METRICS)
            verdict = "pass" if out.passed else "FAIL: " + ", ".join(c.metric for c in out.gates.failures())
            gates.append(f"| {concept} | {steps} | {row} | {time.perf_counter() - t:.0f} | {verdict} |")
            print(gates[-1], flush=True)
    groups = list(next(iter(fidelity.values()))[0])
    print("\n| steps | " + " | ".join(groups) + " | seconds |")
    print("|---:|" + "---:|" * (len(groups) + 1))
    for steps, (acc, sec) in fidelity.items():
        print(f"| {steps} | " + " | ".join(f"{acc[g]:.3f}" for g in groups) + f" | {sec:.0f} |")
    print("\n| concept | steps | " + " | ".join(METRICS) + " | eval s | gates |")
    print("|---|---:|" + "---:|" * (len(METRICS) + 1) + "---|")
    print("\n".join(gates))


if __name__ == "__main__":
    main()
