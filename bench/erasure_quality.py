"""Erasure quality on the embedded model: ACE vs UCE side by side, same prompts and seeds.

    python bench/erasure_quality.py [--images 24] [--concepts star skull kasimir zorbo]

For each concept: the detection rate of the concept on prompts naming it before and after the
patch, and the lowest ratio (after / before) over the other concepts of its family
(specificity). Detection is the embedded evaluator's zero-shot call within the family, images
generated with the default sampler; every method sees the same prompts and seeds.
"""

from __future__ import annotations

import argparse

import torch

from editflow.jobs.erase import EraseJob, run_erase
from editflow.jobs.quick_check import detection_rates, detection_set
from editflow.models.evaluator import Evaluator
from editflow.models.pipeline import embedded_dir, load_pipeline
from editflow.world import DEFAULT_WORLD


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24, help="images per concept")
    ap.add_argument("--concepts", nargs="+", default=["star", "skull", "kasimir", "zorbo"])
    ap.add_argument("--methods", nargs="+", default=["ace", "uce"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    world = DEFAULT_WORLD
    pipe = load_pipeline()
    judge = Evaluator.from_dir(embedded_dir() / "evaluator")
    print(f"| concept | method | rank | seconds | detected before | detected after | "
          f"other {'concepts'}: min after/before |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for word in args.concepts:
        family = world.concept(word).family
        names = [c.name for c in world.family(family) if "null" not in c.tags]
        dset = detection_set(world, names, args.images, seed=7)
        before = detection_rates(pipe, judge, world, dset)
        for name in args.methods:
            patch, _ = run_erase(EraseJob([word], name), pipe)  # what `editflow erase` computes
            seconds = patch.metadata["seconds"]
            with patch.apply(pipe):
                after = detection_rates(pipe, judge, world, dset)
            kept = min(after[c] / before[c] for c in names if c != word and before[c] > 0)
            print(f"| {word} | {name} | {patch.edit.rank} | {seconds:.2f} | {before[word]:.3f} | "
                  f"{after[word]:.3f} | {kept:.3f} |", flush=True)


if __name__ == "__main__":
    main()
