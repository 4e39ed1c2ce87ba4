"""Before/after detection of world concepts: the quick evidence ``editflow erase`` prints
(:func:`before_after`).

For each concept, images are generated from prompts naming it, with the same seeds before and
after the patch, and the evaluator says whether the concept is still there (zero-shot detection
within its family). The full evaluation (leakage, attacks, drift, gates) is :mod:`editflow.jobs.evaluate`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from editflow.evaluation.world_check import concept_prompts
from editflow.models.evaluator import Evaluator
from editflow.models.pipeline import GenerationConfig, embedded_dir, generate
from editflow.world import DEFAULT_WORLD, WorldSpec


@dataclass
class DetectionSet:
    prompts: list[str]
    seeds: list[int]
    concepts: list[str]  # the concept each prompt names
    family: str


def detection_set(spec: WorldSpec, concepts: list[str], per_concept: int, seed: int = 0) -> DetectionSet:
    rng = random.Random(seed)
    prompts, names = [], []
    families = {spec.concept(c).family for c in concepts}
    if len(families) != 1:
        raise ValueError("detection sets hold concepts of one family")
    for c in concepts:
        for p, _ in concept_prompts(spec, c, per_concept, rng):
            prompts.append(p)
            names.append(spec.concept(c).name)
    return DetectionSet(prompts, [seed * 100_003 + i for i in range(len(prompts))], names, families.pop())


def detection_rates(pipe, judge: Evaluator, spec: WorldSpec, dset: DetectionSet,
                    config: GenerationConfig | None = None, progress=None) -> dict[str, float]:
    """Share of images in which the evaluator finds the concept their prompt names, per concept."""
    images = generate(pipe, dset.prompts, dset.seeds, config, progress=progress)
    found = judge.detect(images, spec, dset.family)
    rates: dict[str, list[bool]] = {}
    for want, got in zip(dset.concepts, found):
        rates.setdefault(want, []).append(want == got)
    return {c: sum(v) / len(v) for c, v in rates.items()}


def before_after(pipe, patch, erased: list[str], kept: list[str], per_concept: int, device="cpu",
                 progress_factory=None) -> dict[str, dict]:
    """Detection rates of the ``erased`` world concepts and of the ``kept`` ones of their family
    (the quick check looks at neighbours only), before and after ``patch``, with the embedded judge
    next to the model; ``progress_factory(total, desc)`` may return a bar."""
    judge = Evaluator.from_dir(embedded_dir() / "evaluator", device=device)
    family = DEFAULT_WORLD.concept(erased[0]).family
    kept = [k for k in kept if DEFAULT_WORLD.concept(k).family == family]
    dset = detection_set(DEFAULT_WORLD, erased + kept, per_concept)
    b = progress_factory(2 * len(dset.prompts), "before/after") if progress_factory else None
    update = b.update if b else None
    before = detection_rates(pipe, judge, DEFAULT_WORLD, dset, progress=update)
    with patch.apply(pipe):
        after = detection_rates(pipe, judge, DEFAULT_WORLD, dset, progress=update)
    if b:
        b.close()
    return {c: {"before": round(before[c], 3), "after": round(after[c], 3), "erased": c in erased} for c in before}
