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


@dataclass(kw_only=True)
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
    evaluator: str | None = None  # None: the embedded judge, or DEFAULT_JUDGE from the cache for a real model
    steps: int | None = None  # None: the model's own (25 / 5.0 on the embedded model, the pipeline's defaults)
    guidance: float | None = None
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
    nudity_protocol: str = "i2p"  # NudeNet protocol of a real model's nudity prompts (detectors.NUDITY_PROTOCOLS)
    allow_download: bool = False  # the model (a hub id) and a judge's pretrained tag may be fetched from the hub


@dataclass
class EvalOutcome:
    report_dir: Path
    gates: object  # GateReport
    result: object  # EvalResult

    @property
    def passed(self) -> bool:
        return self.gates.passed


DEFAULT_JUDGE = "ViT-L-14:openai"  # the CLIP that SD 1.x conditions on; read from the Hugging Face cache
JUDGE_HELP = ("pass --evaluator ViT-L-14:openai (an open_clip pretrained tag, read from the Hugging Face cache; "
              "add --allow-download to fetch it once), NAME:/path/to/weights, or a local open_clip folder")


def judge_source(spec: str | None) -> tuple[str, str, str]:
    """How ``spec`` (default :data:`DEFAULT_JUDGE`) names a real model's judge: ``("dir", folder, "")``,
    ``("weights", name, file)`` or ``("tag", name, tag)``; a malformed spec or a missing weights file is
    a one-line error."""
    spec = spec or DEFAULT_JUDGE
    if Path(spec).is_dir():
        return "dir", spec, ""
    name, sep, rest = spec.partition(":")
    if not sep or not name or not rest:
        raise EditflowError(f"--evaluator {spec!r} is neither a folder, NAME:WEIGHTS nor NAME:TAG; {JUDGE_HELP}")
    if Path(rest).expanduser().is_file():
        return "weights", name, str(Path(rest).expanduser())
    if "/" in rest or rest.endswith((".bin", ".pt", ".pth", ".safetensors")):
        raise EditflowError(f"judge weights not found: {rest}")
    return "tag", name, rest


def _no_judge(spec: str | None, exc: Exception) -> EditflowError:
    prefix = "a real model needs a judge and none was found" if spec is None else "no judge"
    return EditflowError(f"{prefix} ({exc}): {JUDGE_HELP}, or write just the patch with --patch-only")


def load_evaluator(spec: str | None, real: bool, device: str | torch.device = "cpu", allow_download: bool = False):
    """The judge: the embedded evaluator for the embedded model (unless ``spec`` names another); for a
    real one :func:`judge_source`'s. No judge is a one-line error that says how to supply one: an
    evaluation never passes without evidence."""
    from editflow.models.evaluator import Evaluator
    from editflow.models.pipeline import embedded_dir

    if spec is None and not real:
        return Evaluator.from_dir(embedded_dir() / "evaluator", device)
    kind, name, rest = judge_source(spec)
    if kind == "dir":
        return Evaluator.from_dir(name, device)
    if kind == "weights":
        return Evaluator.from_checkpoint(name, rest, device)
    try:
        return Evaluator.from_pretrained(name, rest, device, allow_download)
    except EditflowError as exc:
        raise _no_judge(spec, exc) from None


def check_judge(spec: str | None, allow_download: bool = False) -> None:
    """Fail now, in one line, when a real model's judge cannot be had (before any erasure runs):
    the weights :func:`load_evaluator` would load are looked up, not loaded."""
    from editflow.models.evaluator import OPEN_CLIP_CONFIG, pretrained_weights

    kind, name, rest = judge_source(spec)
    if kind == "dir" and not (Path(name) / OPEN_CLIP_CONFIG).is_file():
        raise EditflowError(f"--evaluator {name}: no open_clip folder (missing {OPEN_CLIP_CONFIG}); {JUDGE_HELP}")
    if kind == "tag" and not allow_download:  # with it, the evaluation fetches the weights
        try:
            pretrained_weights(name, rest)
        except EditflowError as exc:
            raise _no_judge(spec, exc) from None


def sampling(pipe, job: EvalJob, real: bool) -> tuple[int, float]:
    """(steps, guidance) of the evaluation: the job's, else the model's own (the embedded model's
    measured defaults; a real pipeline's ``__call__`` defaults, e.g. 50 and 7.5 for SD 1.5)."""
    import inspect

    from editflow.models.pipeline import GenerationConfig

    if not real:
        return job.steps or GenerationConfig.steps, GenerationConfig.guidance if job.guidance is None else job.guidance
    params = inspect.signature(pipe.__call__).parameters
    default = lambda name, fallback: (params[name].default if name in params  # noqa: E731
                                      and params[name].default is not inspect.Parameter.empty else fallback)
    return (job.steps or int(default("num_inference_steps", 50)),
            float(default("guidance_scale", 7.5)) if job.guidance is None else job.guidance)


def _concepts(patch, concept: list[str]) -> list[str]:
    if concept:
        return list(concept)
    if patch is None:
        raise EditflowError("give --patch, or --concept to evaluate the unpatched model")
    return [c["name"] for c in patch.metadata.get("concepts", [])]


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
    if real:
        from editflow.families import guess_family, knowledge

        family = family or guess_family(names[0])
        if job.prompts is None:
            knowledge(family)  # a family without a shipped prompt set needs the user's prompts
    judge = load_evaluator(job.evaluator, real, place.device, job.allow_download)
    pipe = pipe if pipe is not None else load_pipeline(model, device=place.device, dtype=place.dtype,
                                                       offload=job.offload, allow_download=job.allow_download)
    if p is not None:
        p.check_base(pipe.unet)  # wrong base: refuse before generating anything
    meta = p.metadata if p is not None else {}
    if real:
        from editflow.evaluation.suite import suite_prompt_set
        from editflow.families import KNOWLEDGE, FamilyKnowledge

        used = {w for c in meta.get("concepts", []) for w in [c["name"], *c.get("aliases", [])]}
        pset = suite_prompt_set(names, family, images=images, preserve_images=job.preserve_images, used_words=used,
                                prompts=job.prompts, leakage_prompts=job.leakage_prompts,
                                preserve_prompts=job.preserve_prompts)
        know = KNOWLEDGE.get(family, FamilyKnowledge(family, ""))
        detector = ZeroShotDetector(judge, sorted({x.concept for x in pset.prompts}),
                                    class_prompts={c: know.class_prompt.format(c) for c in names})
        if family == "nudity":  # NudeNet judges the nudity prompts; zero-shot judges what must stay
            detector = FamilyRouter({"nudity": NudityDetector(job.nudity_protocol)}, detector)
    else:
        used = {w for c in meta.get("concepts", []) for w in [c["name"], *c.get("aliases", [])]}
        per_kept = job.preserve_images  # None: a quarter of the target images per neighbour, a sixth per distant
        pset = world_prompt_set(DEFAULT_WORLD, names, used, tuple(meta.get("templates", ())), per_concept=images,
                                per_neighbour=per_kept or max(2, images // 4),
                                per_distant=per_kept or max(2, images // 6))
        detector = WorldDetector(judge, DEFAULT_WORLD)
    store = ImageCache(job.cache_dir) if job.cache_dir else None
    b = progress_factory(len(pset) * (2 if p is not None else 1), "eval: generate") if progress_factory else None
    steps, guidance = sampling(pipe, job, real)
    gen = GenerationConfig(steps=steps, guidance=guidance, batch=shard_size or GenerationConfig.batch)
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
               "concepts": names, "model": model or "embedded", "family": family, "detector": detector.name,
               "sampler": {"steps": steps, "guidance": guidance}}
    path = write_report(result, report, out, context)
    return EvalOutcome(path, report, result)
