"""One evaluation from plain, JSON-able inputs: what ``editflow eval`` and the flows both run.

:class:`EvalJob` names the patch (or concepts, for the unpatched baseline), the model, the judge,
the prompts and the gates; :func:`run_eval` builds the prompt set and detector, generates,
computes the metrics, judges the gates and writes the report folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from editflow.errors import EditflowError

if TYPE_CHECKING:
    import torch


@dataclass
class EvalJob:
    patch: str | None = None
    concepts: list[str] = field(default_factory=list)  # default: the patch's concepts
    model: str | None = None  # None: the embedded model
    gates: str | None = None  # None: configs/gates/default.yaml
    out: str | None = None  # report folder; default <patch>-eval/ or eval-<concepts>/
    images: int = 24
    family: str | None = None
    prompts: str | None = None
    leakage_prompts: str | None = None
    preserve_prompts: str | None = None
    evaluator: str | None = None
    steps: int = 25
    guidance: float = 5.0
    cache_dir: str | None = None  # original-image cache; None: no cache
    attack: bool = True  # run the concept-inversion attack (attack_success, memorization_score)
    attack_steps: int = 150
    attack_restarts: int = 3
    preserve_images: int | None = None  # per preserved concept; None: a quarter of images (distant: a sixth)
    # where the model (and the judge) run, as names, resolved where they are loaded (Dask workers resolve
    # their own); None: $EDITFLOW_DEVICE / $EDITFLOW_DTYPE, else auto (editflow.models.device)
    device: str | None = None
    dtype: str | None = None  # of the generator; the judge stays float32
    offload: bool = False  # diffusers model CPU offload (an accelerator device only)


@dataclass
class EvalOutcome:
    report_dir: Path
    gates: object  # GateReport
    result: object  # EvalResult

    @property
    def passed(self) -> bool:
        return self.gates.passed


def load_evaluator(spec: str | None, real: bool, device: str | torch.device = "cpu"):
    from editflow.models.evaluator import Evaluator
    from editflow.models.pipeline import embedded_dir

    if spec is None:
        if real:
            raise EditflowError("a real model needs --evaluator: a local open_clip folder or NAME:WEIGHTS "
                                "(e.g. ViT-L-14:/models/open_clip_vit_l14.bin)")
        return Evaluator.from_dir(embedded_dir() / "evaluator", device)
    if Path(spec).is_dir():
        return Evaluator.from_dir(spec, device)
    name, sep, weights = spec.partition(":")
    if not sep:
        raise EditflowError(f"--evaluator {spec!r} is neither a folder nor NAME:WEIGHTS")
    return Evaluator.from_checkpoint(name, weights, device)


def _concepts(patch, concept: list[str]) -> list[str]:
    if concept:
        return list(concept)
    if patch is None:
        raise EditflowError("give --patch, or --concept to evaluate the unpatched model")
    return [c["name"] for c in patch.metadata.get("concepts", [])]


def _real_prompts(concepts, preserve, prompts_file, leakage_file, preserve_file, family, n, n_keep=None):
    from editflow.evaluation.prompts import EvalPrompt, PromptSet, load_prompt_file

    items: list[EvalPrompt] = []
    if prompts_file is not None:
        items += load_prompt_file(prompts_file, concepts[0], "target", family, limit=None).prompts
    else:
        items += [EvalPrompt(f"a photo of {c}", c, family, "target", "", i) for c in concepts for i in range(n)]
    if leakage_file is not None:
        items += load_prompt_file(leakage_file, concepts[0], "leakage", family, seed=1).prompts
    if preserve_file is not None:
        kept = load_prompt_file(preserve_file, "", "neighbour", "preserved", seed=2).prompts
        if any(not p.concept for p in kept):
            raise EditflowError(f"{preserve_file}: preserve prompts need a CSV 'concept' column")
        items += kept
    else:
        items += [EvalPrompt(f"a photo of {c}", c, "preserved", "neighbour", "", 2_000_000 + i)
                  for c in preserve for i in range(n_keep or max(1, n // 4))]
    return PromptSet(items)


def run_eval(job: EvalJob, pipe=None, map_fn: Callable[[Callable, Iterable], Iterable] = map,
             progress_factory=None, remote: bool = False, shard_size: int | None = None) -> EvalOutcome:
    """Evaluate ``job``; ``progress_factory(total, desc)`` may return a bar with ``update``/``close``.

    ``remote=True``: ``map_fn`` runs shards on other processes (Dask workers), which load the model
    and patch themselves; ``shard_size`` (default: the generation batch) sets how finely it splits.
    """
    from editflow.edits import Patch
    from editflow.evaluation.detectors import FamilyRouter, NudityDetector, WorldDetector, ZeroShotDetector
    from editflow.evaluation.evaluate import evaluate
    from editflow.evaluation.gates import Gates
    from editflow.evaluation.generation import ImageCache
    from editflow.evaluation.prompts import world_prompt_set
    from editflow.evaluation.report import sha256_file, write_report
    from editflow.models.device import Placement
    from editflow.models.pipeline import GenerationConfig, load_pipeline
    from editflow.world import DEFAULT_WORLD

    patch, concept, model, family, images = job.patch, job.concepts, job.model, job.family, job.images
    place = Placement.resolve(job.device, job.dtype)  # a missing device fails before anything is loaded
    patch_sha256 = sha256_file(patch) if patch is not None and Path(patch).is_file() else None
    p = Patch.load(patch) if patch is not None else None
    names = _concepts(p, concept)
    if not names:
        raise EditflowError("the patch names no concepts; give --concept")
    gate_spec = Gates.load(job.gates)
    real = model is not None
    if not real:
        fams = {DEFAULT_WORLD.concept(c).family for c in names}  # unknown concept -> one-line error
        if family is None:
            if len(fams) != 1:
                raise EditflowError(f"concepts of several families {sorted(fams)}: evaluate one family at a time")
            family = fams.pop()
    family = family or "object"
    judge = load_evaluator(job.evaluator, real, place.device)
    pipe = pipe if pipe is not None else load_pipeline(model, device=place.device, dtype=place.dtype,
                                                       offload=job.offload)
    if p is not None:
        p.check_base(pipe.unet)  # wrong base: refuse before generating anything
    meta = p.metadata if p is not None else {}
    if real:
        preserve = [c for c in meta.get("preserve", []) if c not in names]
        pset = _real_prompts(names, preserve, job.prompts, job.leakage_prompts, job.preserve_prompts, family,
                             images, job.preserve_images)
        detector = ZeroShotDetector(judge, sorted({x.concept for x in pset.prompts}))
        if family == "nudity":  # NudeNet judges the nudity prompts; zero-shot judges what must stay
            detector = FamilyRouter({"nudity": NudityDetector()}, detector)
    else:
        used = {w for c in meta.get("concepts", []) for w in [c["name"], *c.get("aliases", [])]}
        per_kept = job.preserve_images  # None: a quarter of the target images per neighbour, a sixth per distant
        pset = world_prompt_set(DEFAULT_WORLD, names, used, tuple(meta.get("templates", ())), per_concept=images,
                                per_neighbour=per_kept or max(2, images // 4),
                                per_distant=per_kept or max(2, images // 6))
        detector = WorldDetector(judge, DEFAULT_WORLD)
    store = ImageCache(job.cache_dir) if job.cache_dir else None
    b = progress_factory(len(pset) * (2 if p is not None else 1), "eval: generate") if progress_factory else None
    gen = GenerationConfig(steps=job.steps, guidance=job.guidance, batch=shard_size or GenerationConfig.batch)
    runners = None
    if remote:
        from editflow.evaluation.generation import ModelShardRunner

        where = {"device": job.device, "dtype": job.dtype, "offload": job.offload}  # names: workers resolve them
        runners = (ModelShardRunner(model, None, gen, **where), ModelShardRunner(model, patch, gen, **where))
    result = evaluate(pipe, pset, detector, judge, p, gen, store, map_fn=map_fn, progress=b.update if b else None,
                      runners=runners)
    if b is not None:
        b.close()
    if job.attack:
        from dataclasses import replace

        from editflow.evaluation.attack import AttackConfig, attack_result

        attack = AttackConfig(restarts=job.attack_restarts)
        attack.inversion = replace(attack.inversion, steps=job.attack_steps)
        n_targets = len(set(x.concept for x in pset.prompts if x.role == "target"))
        b = (progress_factory(job.attack_steps * attack.restarts * n_targets, "eval: inversion attack")
             if progress_factory else None)
        anchors = {c["name"]: c.get("anchor", "") for c in meta.get("concepts", [])}
        if not real and not anchors:
            from editflow.world.erasure import FAMILY_ANCHORS

            anchors = {c: FAMILY_ANCHORS[DEFAULT_WORLD.concept(c).family] for c in names}
        attack_result(pipe, result, p, detector, judge, anchors, attack, gen, b.update if b else None)
        if b is not None:
            b.close()
    report = gate_spec.judge(result.metrics, family, result.absent)
    out = Path(job.out) if job.out else (Path(patch).with_name(Path(patch).stem + "-eval") if patch is not None
                                         else Path("eval-" + "-".join(names)))
    context = {"patch": str(patch) if patch else None, "patch_sha256": patch_sha256, "method": meta.get("method"),
               "concepts": names, "model": model or "embedded", "family": family, "detector": detector.name}
    path = write_report(result, report, out, context)
    return EvalOutcome(path, report, result)
