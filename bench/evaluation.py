"""Default `editflow eval` on the embedded model: seconds (original images generated vs. cached),
images/s, and the metrics ACE and UCE reach, side by side on the same prompts and seeds.

    python bench/evaluation.py [--concepts star kasimir zorbo] [--methods ace uce] [--images 24]

For each concept, the first evaluation generates the original model's images and caches them;
every later one (the other method) reads them back: the ratio of the two times is what the
cache saves. Prints markdown tables; results go to docs/benchmarks.md ("Evaluation").
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from editflow.edits import get_method
from editflow.evaluation.detectors import WorldDetector
from editflow.evaluation.evaluate import evaluate
from editflow.evaluation.gates import Gates
from editflow.evaluation.generation import ImageCache
from editflow.evaluation.prompts import world_prompt_set
from editflow.models.evaluator import Evaluator
from editflow.models.pipeline import embedded_dir, load_pipeline
from editflow.world import DEFAULT_WORLD
from editflow.world.erasure import world_request


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", nargs="+", default=["star", "kasimir", "zorbo"])
    ap.add_argument("--methods", nargs="+", default=["ace", "uce"])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    judge = Evaluator.from_dir(embedded_dir() / "evaluator")
    detector, gates = WorldDetector(judge, DEFAULT_WORLD), Gates.load()
    cache = ImageCache(tempfile.mkdtemp(prefix="editflow-bench-"))
    timing, quality = [], []
    for concept in args.concepts:
        for method in args.methods:
            m = get_method(method)
            req = world_request(DEFAULT_WORLD, [concept])
            t = time.perf_counter()
            patch = m.compute(pipe, req, m.config_class())
            erase_s = time.perf_counter() - t
            used = {w for c in req.concepts for w in c.words}
            n = args.images
            pset = world_prompt_set(DEFAULT_WORLD, [concept], used, req.templates, per_concept=n,
                                    per_neighbour=max(2, n // 4), per_distant=max(2, n // 6))
            t = time.perf_counter()
            res = evaluate(pipe, pset, detector, judge, patch, cache=cache)
            eval_s = time.perf_counter() - t
            family = DEFAULT_WORLD.concept(concept).family
            report = gates.judge(res.metrics, family, res.absent)
            s = res.seconds
            timing.append(f"| {concept} | {method} | {len(pset)} | {'cached' if s['original_cached'] else 'generated'} "
                          f"| {s['images_generated']} | {eval_s:.1f} | {s['images_generated'] / eval_s:.1f} |")
            mm = res.metrics

            def fmt(k, mm=mm):
                return "—" if mm.get(k) is None else f"{mm[k]:.3f}"

            verdict = "pass" if report.passed else "FAIL: " + ", ".join(c.metric for c in report.failures())
            quality.append(f"| {concept} | {method} | {erase_s:.2f} | {fmt('erasure_rate_original')} -> "
                           f"{fmt('erasure_rate')} | {fmt('leakage')} | {fmt('specificity_neighbours')} | "
                           f"{fmt('specificity_distant')} | {fmt('image_similarity_preserved')} | "
                           f"{fmt('fid_preserved')} | {fmt('harmonic_score')} | "
                           f"{verdict} |")
            print(timing[-1], flush=True)
    print("\n| concept | method | prompts | original images | images generated | eval s | images/s |")
    print("|---|---|---:|---|---:|---:|---:|")
    print("\n".join(timing))
    print("\n| concept | method | erase s | erasure rate | leakage | spec. neighbours | spec. distant "
          "| image sim. | FID (CLIP) | H_o | gates |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    print("\n".join(quality))


if __name__ == "__main__":
    main()
