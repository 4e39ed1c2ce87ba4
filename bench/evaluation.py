"""Default `editflow eval` on the embedded model: seconds (original images generated vs. cached),
images/s, and the metrics ACE and UCE reach, side by side on the same prompts and seeds.

    python bench/evaluation.py [--concepts star kasimir zorbo] [--methods ace uce] [--images 24]
    python bench/evaluation.py --concepts naked --methods ace ace+none uce uce+none esd-x esd-u   # nudity

A method may carry a fine-tuning mode after ``+`` (``ace+none``: the closed form alone, where the
default ``auto`` adds the implied stage for nudity; ``ace+minmax``).

Each patch is computed and judged exactly as `editflow erase --patch-only` and `editflow eval`
do (``run_erase``, ``run_eval``). For each concept, the first evaluation generates the original
model's images and caches them;
every later one (the other method) reads them back: the ratio of the two times is what the
cache saves. Prints markdown tables; results go to docs/benchmarks.md ("Evaluation").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from editflow.jobs.erase import EraseJob, run_erase
from editflow.jobs.evaluate import EvalJob, run_eval
from editflow.models.pipeline import load_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", nargs="+", default=["star", "kasimir", "zorbo"])
    ap.add_argument("--methods", nargs="+", default=["ace", "uce"])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    work = Path(tempfile.mkdtemp(prefix="editflow-bench-"))
    timing, quality, kinds = [], [], []
    for concept in args.concepts:
        for method in args.methods:
            name, _, mode = method.partition("+")
            job = EraseJob([concept], name, finetune={"mode": mode} if mode else {})
            patch, _ = run_erase(job, pipe)  # what `editflow erase` computes
            erase_s = patch.metadata["seconds"]
            path = patch.save(work / f"{concept}-{name}-{mode or 'auto'}.safetensors")
            t = time.perf_counter()
            outcome = run_eval(EvalJob(patch=str(path), images=args.images, cache_dir=str(work / "cache")), pipe)
            eval_s = time.perf_counter() - t
            res, report = outcome.result, outcome.gates
            s = res.seconds
            n_prompts = len(res.prompts)
            timing.append(f"| {concept} | {method} | {n_prompts} | {'cached' if s['original_cached'] else 'generated'} "
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
            kinds.append(f"| {concept} | {method} | {fmt('erasure_rate_original')} -> {fmt('erasure_rate')} | "
                         + " | ".join(f"{fmt(f'leakage_{k}_original')} -> {fmt(f'leakage_{k}')}"
                                      for k in ("implicit", "synonym", "misspelling", "paraphrase"))
                         + f" | {fmt('specificity_neighbours')} | {fmt('specificity_distant')} | "
                           f"{fmt('image_similarity_preserved')} | {fmt('attack_success')} | {verdict} |")
            print(timing[-1], flush=True)
    print("\n| concept | method | prompts | original images | images generated | eval s | images/s |")
    print("|---|---|---:|---|---:|---:|---:|")
    print("\n".join(timing))
    print("\n| concept | method | erase s | erasure rate | leakage | spec. neighbours | spec. distant "
          "| image sim. | FID (CLIP) | H_o | gates |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    print("\n".join(quality))
    print("\n| concept | method | erasure (explicit) | leakage implicit | synonym | misspelling | paraphrase "
          "| spec. neighbours | spec. distant | image sim. | attack success | gates |")
    print("|---|---|---|---|---|---|---|---:|---:|---:|---:|---|")
    print("\n".join(kinds))


if __name__ == "__main__":
    main()
