"""``editflow eval``: prove an erasure worked (or did not), with gates and a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from editflow.cli.common import ModelOpt, bar, cli_errors, err
from editflow.errors import EditflowError

GATE_FAILED = 3


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate_cmd)


def _evaluator(spec: str | None, real: bool):
    from editflow.models.evaluator import Evaluator
    from editflow.models.pipeline import embedded_dir

    if spec is None:
        if real:
            raise EditflowError("a real model needs --evaluator: a local open_clip folder or NAME:WEIGHTS "
                                "(e.g. ViT-L-14:/models/open_clip_vit_l14.bin)")
        return Evaluator.from_dir(embedded_dir() / "evaluator")
    if Path(spec).is_dir():
        return Evaluator.from_dir(spec)
    name, sep, weights = spec.partition(":")
    if not sep:
        raise EditflowError(f"--evaluator {spec!r} is neither a folder nor NAME:WEIGHTS")
    return Evaluator.from_checkpoint(name, weights)


def _concepts(patch, concept: list[str]) -> list[str]:
    if concept:
        return list(concept)
    if patch is None:
        raise EditflowError("give --patch, or --concept to evaluate the unpatched model")
    return [c["name"] for c in patch.metadata.get("concepts", [])]


def _real_prompts(concepts, preserve, prompts_file, leakage_file, preserve_file, family, n):
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
                  for c in preserve for i in range(max(1, n // 4))]
    return PromptSet(items)


@cli_errors
def evaluate_cmd(
    patch: Annotated[Path | None, typer.Option("--patch", help="Patch to evaluate (.safetensors).")] = None,
    concept: Annotated[list[str], typer.Option(
        "--concept", "-c", help="Concept to judge (repeatable). Default: the patch's concepts; without "
                                "--patch, evaluates the unpatched model as a baseline.")] = [],  # noqa: B006
    model: ModelOpt = None,
    gates: Annotated[Path | None, typer.Option(
        help="Gate thresholds (YAML) (default: configs/gates/default.yaml).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Report folder (report.json, report.md, grids) (default: <patch>-eval/).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON on stdout.")] = False,
    images: Annotated[int, typer.Option(
        min=2, help="Images per erased concept (target prompts); neighbours get a quarter, distant concepts "
                    "a sixth, leakage kinds a share.")] = 24,
    family: Annotated[str | None, typer.Option(
        help="Concept family for the gates (object, style, identity, nudity, ...). Default: the world's.")] = None,
    prompts: Annotated[Path | None, typer.Option(
        help="Real models: target prompts (.txt or CSV with 'prompt').")] = None,
    leakage_prompts: Annotated[Path | None, typer.Option(help="Real models: synonym/paraphrase prompts.")] = None,
    preserve_prompts: Annotated[Path | None, typer.Option(
        help="Real models: CSV with 'prompt' and 'concept' columns of concepts to keep.")] = None,
    evaluator: Annotated[str | None, typer.Option(
        help="open_clip judge: a local folder or NAME:WEIGHTS. Default: the embedded evaluator.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Sampler steps.")] = 25,
    guidance: Annotated[float, typer.Option(min=0.0, help="Classifier-free guidance scale.")] = 5.0,
    cache_dir: Annotated[Path | None, typer.Option(
        envvar="EDITFLOW_CACHE", help="Cache of original-model images (default: ~/.cache/editflow).")] = None,
    cache: Annotated[bool, typer.Option(help="Reuse/cache the original model's images.")] = True,
):
    """Evaluate an erasure: erasure rate, leakage, specificity, CLIP score, drift; judge the gates.

    Exit 0 when every gate passes, 3 when a gate fails, 1 on an error (then no report is written).
    """
    from editflow.edits import Patch
    from editflow.evaluation.detectors import FamilyRouter, NudityDetector, WorldDetector, ZeroShotDetector
    from editflow.evaluation.evaluate import evaluate
    from editflow.evaluation.gates import Gates
    from editflow.evaluation.generation import ImageCache
    from editflow.evaluation.prompts import world_prompt_set
    from editflow.evaluation.report import write_report
    from editflow.models.pipeline import GenerationConfig, load_pipeline
    from editflow.world import DEFAULT_WORLD

    p = Patch.load(patch) if patch is not None else None
    names = _concepts(p, concept)
    if not names:
        raise EditflowError("the patch names no concepts; give --concept")
    gate_spec = Gates.load(gates)
    real = model is not None
    if not real:
        fams = {DEFAULT_WORLD.concept(c).family for c in names}  # unknown concept -> one-line error
        if family is None:
            if len(fams) != 1:
                raise EditflowError(f"concepts of several families {sorted(fams)}: evaluate one family at a time")
            family = fams.pop()
    family = family or "object"
    judge = _evaluator(evaluator, real)
    pipe = load_pipeline(model)
    if p is not None:
        p.check_base(pipe.unet)  # wrong base: refuse before generating anything
    meta = p.metadata if p is not None else {}
    if real:
        preserve = [c for c in meta.get("preserve", []) if c not in names]
        pset = _real_prompts(names, preserve, prompts, leakage_prompts, preserve_prompts, family, images)
        detector = ZeroShotDetector(judge, sorted({x.concept for x in pset.prompts}))
        if family == "nudity":  # NudeNet judges the nudity prompts; zero-shot judges what must stay
            detector = FamilyRouter({"nudity": NudityDetector()}, detector)
    else:
        used = {w for c in meta.get("concepts", []) for w in [c["name"], *c.get("aliases", [])]}
        pset = world_prompt_set(DEFAULT_WORLD, names, used, tuple(meta.get("templates", ())), per_concept=images,
                                per_neighbour=max(2, images // 4), per_distant=max(2, images // 6))
        detector = WorldDetector(judge, DEFAULT_WORLD)
    store = ImageCache(cache_dir or Path.home() / ".cache" / "editflow") if cache else None
    b = bar(len(pset) * (2 if p is not None else 1), "eval: generate")
    result = evaluate(pipe, pset, detector, judge, p, GenerationConfig(steps=steps, guidance=guidance), store,
                      progress=b.update)
    b.close()
    report = gate_spec.judge(result.metrics, family, result.absent)
    out = out or (patch.with_name(patch.stem + "-eval") if patch is not None else Path("eval-" + "-".join(names)))
    context = {"patch": str(patch) if patch else None, "method": meta.get("method"), "concepts": names,
               "model": model or "embedded", "family": family, "detector": detector.name}
    path = write_report(result, report, out, context)
    if as_json:
        typer.echo((path / "report.json").read_text())
    else:
        for c in report.checks:
            mark = "pass" if c.passed else "FAIL"
            err.print(f"{mark}  {c.metric:28s} {c.reason}", highlight=False)
        typer.echo(json.dumps({"passed": report.passed, "report": str(path / "report.md"),
                               "harmonic_score": result.metrics.get("harmonic_score")}, indent=2))
    if not report.passed:
        raise typer.Exit(GATE_FAILED)
