"""One evaluation pass: seeded generation with the original and the patched model, then metrics.

Every prompt of a :class:`~editflow.evaluation.prompts.PromptSet` is generated once with the
original model (from :class:`~editflow.evaluation.generation.ImageCache` when it holds them) and
once with the patch applied, with the same seed, so each patched image has an original twin.

Metrics (lower is better for the first two):

* ``erasure_rate``   -- share of target images in which the detector still finds the concept;
* ``leakage``        -- the same over leakage prompts (words/contexts the erasure did not use),
  with ``leakage_<kind>`` per kind;
* ``specificity_neighbours`` / ``specificity_distant`` / ``specificity`` -- detection accuracy
  on preserved prompts after, divided by before (capped at 1);
* ``clip_score_target`` / ``clip_score_preserved`` -- mean CLIPScore, 100·max(cos, 0)
  (Hessel et al. 2021), after; ``*_original`` before;
* ``fid_preserved``  -- Fréchet distance between original and patched image features of the
  preserved prompts, in the evaluator's feature space (a CLIP-feature FID);
* ``image_similarity_preserved`` -- mean cosine similarity of paired image features;
* ``attack_success`` / ``attack_baseline`` / ``memorization_score`` -- the concept-inversion
  attack, the same drawing with the token before inversion (the floor it is read against) and FMN's M-Score,
  filled in by :func:`editflow.evaluation.attack.attack_result` (absent, with the reason, when
  the attack is not run);
* ``harmonic_score`` -- H_o of (1 − erasure rate, specificity, 1 − leakage) (MACE).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from PIL import Image

from editflow.evaluation.detectors import Detector
from editflow.evaluation.generation import (
    ImageCache,
    PipelineShardRunner,
    generate_sharded,
    make_shards,
    model_fingerprint,
)
from editflow.evaluation.metrics import frechet_distance, harmonic_score, paired_similarity, rate, ratio
from editflow.evaluation.prompts import EvalPrompt, PromptSet
from editflow.models.evaluator import Evaluator
from editflow.models.pipeline import GenerationConfig

ABSENT = dict.fromkeys(("attack_success", "attack_baseline", "memorization_score"),
                       "the inversion attack was not run (--no-attack)")


@dataclass
class EvalResult:
    metrics: dict[str, float | None]
    absent: dict[str, str]
    rows: list[dict]  # per prompt: text, concept, role, kind, seed, before, after
    original: list[Image.Image] = field(repr=False)
    patched: list[Image.Image] = field(repr=False)
    prompts: list[EvalPrompt] = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    attacks: list[dict] = field(default_factory=list, repr=False)  # per concept, see evaluation.attack

    def per_concept(self) -> list[dict]:
        """Detection before/after per (role, concept), for the report table."""
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in self.rows:
            groups.setdefault((r["role"], r["concept"]), []).append(r)
        order = {"target": 0, "leakage": 1, "neighbour": 2, "distant": 3}
        return [{"role": role, "concept": c, "n": len(rs), "before": rate([r["before"] for r in rs]),
                 "after": rate([r["after"] for r in rs])}
                for (role, c), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1]))]


def _original_images(pipe, prompts, seeds, config, cache, map_fn, progress, runner=None
                     ) -> tuple[list[Image.Image], bool]:
    key = None
    if cache is not None:
        key = ImageCache.key(model_fingerprint(pipe), config, prompts, seeds)
        hit = cache.get(key, len(prompts))
        if hit is not None:
            if progress is not None:
                progress(len(prompts))
            return hit, True
    images = generate_sharded(runner or PipelineShardRunner(pipe, config, progress),
                              make_shards(prompts, seeds, config.batch), map_fn)
    if cache is not None:
        cache.put(key, images)
    return images, False


def evaluate(pipe, prompts: PromptSet, detector: Detector, evaluator: Evaluator, patch=None,
             config: GenerationConfig | None = None, cache: ImageCache | None = None,
             map_fn: Callable[[Callable, Iterable], Iterable] = map, progress=None,
             runners: tuple[Callable, Callable] | None = None) -> EvalResult:
    """Generate original and patched images for ``prompts`` (same seeds) and compute the metrics.

    ``map_fn`` spreads the generation shards (``map`` in process; a Dask client's map in the
    flows); ``runners`` = (original, patched) shard runners that load their own model on a worker
    (:class:`~editflow.evaluation.generation.ModelShardRunner`) instead of using ``pipe``.
    ``patch=None`` evaluates the base model itself: patched == original, so specificity is 1
    and the erasure rate is the model's own detection rate (a baseline, and a failing gate).
    """
    if not len(prompts):
        raise ValueError("empty prompt set")
    config = config or GenerationConfig()
    items = prompts.prompts
    texts, seeds = [p.text for p in items], [p.seed for p in items]
    t0 = time.perf_counter()
    original, cached = _original_images(pipe, texts, seeds, config, cache, map_fn, progress,
                                        runners[0] if runners else None)
    t1 = time.perf_counter()
    if patch is None:
        patched = original
    else:
        shards = make_shards(texts, seeds, config.batch)
        if runners:
            patch.check_base(pipe.unet)
            patched = generate_sharded(runners[1], shards, map_fn)
        else:
            with patch.apply(pipe):
                patched = generate_sharded(PipelineShardRunner(pipe, config, progress), shards, map_fn)
    t2 = time.perf_counter()
    before, f_before = detector.detect(original, items), evaluator.image_features(original)
    clip_before = evaluator.clip_score(original, texts, f_before)
    if patch is None:  # nothing changed: judge the images once
        after, f_after, clip_after = before, f_before, clip_before
    else:
        after, f_after = detector.detect(patched, items), evaluator.image_features(patched)
        clip_after = evaluator.clip_score(patched, texts, f_after)
    t3 = time.perf_counter()

    idx = {role: [i for i, p in enumerate(items) if p.role == role] for role in ("target", "leakage", "neighbour",
                                                                                  "distant")}
    kept = idx["neighbour"] + idx["distant"]
    pick = lambda flags, ids: [flags[i] for i in ids]  # noqa: E731
    mean = lambda t, ids: float(t[ids].mean()) if ids else None  # noqa: E731
    m: dict[str, float | None] = {
        "erasure_rate": rate(pick(after, idx["target"])),
        "erasure_rate_original": rate(pick(before, idx["target"])),
        "leakage": rate(pick(after, idx["leakage"])),
        "leakage_original": rate(pick(before, idx["leakage"])),
    }
    for kind in sorted({items[i].kind for i in idx["leakage"]}):
        ids = [i for i in idx["leakage"] if items[i].kind == kind]
        m[f"leakage_{kind}"] = rate(pick(after, ids))
        m[f"leakage_{kind}_original"] = rate(pick(before, ids))
    for name, ids in (("specificity_neighbours", idx["neighbour"]), ("specificity_distant", idx["distant"]),
                      ("specificity", kept)):
        m[f"{name}_accuracy_original"] = rate(pick(before, ids))
        m[f"{name}_accuracy"] = rate(pick(after, ids))
        m[name] = ratio(m[f"{name}_accuracy"], m[f"{name}_accuracy_original"])
    m["clip_score_target"] = mean(clip_after, idx["target"])
    m["clip_score_target_original"] = mean(clip_before, idx["target"])
    m["clip_score_preserved"] = mean(clip_after, kept)
    m["clip_score_preserved_original"] = mean(clip_before, kept)
    m["fid_preserved"] = frechet_distance(f_before[kept], f_after[kept]) if len(kept) >= 2 else None
    m["image_similarity_preserved"] = (float(paired_similarity(f_before[kept], f_after[kept]).mean())
                                       if kept else None)
    m["attack_success"] = None
    m["attack_baseline"] = None
    m["memorization_score"] = None
    m["harmonic_score"] = harmonic_score(m["erasure_rate"], m["specificity"], m["leakage"])
    rows = [{"text": p.text, "concept": p.concept, "role": p.role, "kind": p.kind, "seed": p.seed,
             "before": bool(b), "after": bool(a)} for p, b, a in zip(items, before, after)]
    generated = (0 if cached else len(items)) + (len(items) if patch is not None else 0)
    seconds = {"original": round(t1 - t0, 2), "original_cached": cached, "patched": round(t2 - t1, 2),
               "judge": round(t3 - t2, 2), "images_generated": generated}
    return EvalResult(m, dict(ABSENT), rows, original, patched, list(items), seconds)
