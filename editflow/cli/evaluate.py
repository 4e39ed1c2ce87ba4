"""``editflow eval``: prove an erasure worked (or did not), with gates and a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from editflow.cli.common import (
    MAX_IMAGES,
    MAX_SAMPLER_STEPS,
    MAX_TRAIN_STEPS,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    NudityProtocolName,
    NudityProtocolOpt,
    OffloadOpt,
    bar,
    check_out,
    cli_errors,
    dtype_name,
    err,
    finite,
    placement,
)
from editflow.errors import EditflowError

GATE_FAILED = 3



def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate_cmd)


def _check_family(family: str, gates: Path | None) -> None:
    """Refuse a family nothing knows: neither the world's, nor a detector's (nudity), nor a section of
    the gate file (which would judge it with the default gates alone)."""
    from editflow.evaluation.gates import Gates
    from editflow.world import FAMILIES

    valid = dict.fromkeys([*FAMILIES, "nudity", *Gates.load(gates).families])
    if family not in valid:
        raise EditflowError(f"unknown --family {family!r}; valid: {', '.join(valid)}")


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
        min=2, max=MAX_IMAGES,
        help="Images per erased concept (target prompts); neighbours get a quarter, distant concepts "
             "a sixth, leakage kinds a share.")] = 24,
    preserve_images: Annotated[int | None, typer.Option(
        min=1, max=MAX_IMAGES,
        help="Images per preserved concept (default: a quarter of --images for same-family neighbours, a "
             "sixth for other families). 16 or more resolves a 2 % specificity loss.")] = None,
    family: Annotated[str | None, typer.Option(
        help="Concept family for the gates (object, style, identity, nudity, ...). Default: the world's.")] = None,
    prompts: Annotated[Path | None, typer.Option(
        help="Real models: target prompts (.txt or CSV with 'prompt', e.g. I2P's) instead of the family's shipped "
             "set (configs/prompts/<family>.csv).")] = None,
    leakage_prompts: Annotated[Path | None, typer.Option(
        help="Real models: leakage prompts (CSV with 'prompt', optional 'kind') instead of the shipped ones.")] = None,
    preserve_prompts: Annotated[Path | None, typer.Option(
        help="Real models: CSV with 'prompt' and 'concept' columns of what must stay, instead of the shipped "
             "everyday captions (configs/prompts/preservation.csv).")] = None,
    evaluator: Annotated[str | None, typer.Option(
        help="open_clip judge: a local folder, NAME:WEIGHTS (a file) or NAME:TAG (an open_clip pretrained tag from "
             "the Hugging Face cache). Default: the embedded evaluator; ViT-L-14:openai for a real model.")] = None,
    steps: Annotated[int | None, typer.Option(
        min=1, max=MAX_SAMPLER_STEPS,
        help="Sampler steps (default: the model's own: 25 on the embedded model, the pipeline's default, e.g. 50, "
             "on a real one).")] = None,
    guidance: Annotated[float | None, typer.Option(
        min=0.0, callback=finite,
        help="Classifier-free guidance scale (default: 5 on the embedded model, the pipeline's, e.g. 7.5).")] = None,
    nudity_protocol: NudityProtocolOpt = NudityProtocolName.i2p,
    allow_download: Annotated[bool, typer.Option(
        help="Let --evaluator NAME:TAG fetch an open_clip pretrained tag from the hub (once; then it is cached).")
    ] = False,
    cache_dir: Annotated[Path | None, typer.Option(
        envvar="EDITFLOW_CACHE", help="Cache of original-model images (default: ~/.cache/editflow).")] = None,
    cache: Annotated[bool, typer.Option(help="Reuse/cache the original model's images.")] = True,
    attack: Annotated[bool, typer.Option(
        help="Run the concept-inversion attack (Pham et al. 2023): learn a token for each erased concept against "
             "the patched model from the original's images; reports attack_success and memorization_score.")
    ] = True,
    attack_steps: Annotated[int, typer.Option(
        min=1, max=MAX_TRAIN_STEPS, help="Gradient steps of the inversion attack.")] = 150,
    attack_restarts: Annotated[int, typer.Option(
        min=1, max=100, help="Attack tries per concept (new seed and start each); the best one counts.")] = 3,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offload: OffloadOpt = False,
):
    """Evaluate an erasure: erasure rate, leakage, specificity, CLIP score, drift; judge the gates.

    Exit 0 when every gate passes, 3 when a gate fails, 1 on an error (then no report is written).
    """
    from editflow.jobs.evaluate import EvalJob, run_eval

    placement(device, dtype, offload)  # a device this machine lacks fails now, not after the prompts are built
    if family is not None:
        _check_family(family, gates)
    if out is not None:
        check_out(out, kind="dir")
    elif patch is not None:  # the default report folder
        check_out(patch.with_name(patch.stem + "-eval"), "report folder", kind="dir")
    job = EvalJob(patch=str(patch) if patch else None, concepts=list(concept), model=model,
                  gates=str(gates) if gates else None, out=str(out) if out else None, images=images, family=family,
                  prompts=str(prompts) if prompts else None,
                  leakage_prompts=str(leakage_prompts) if leakage_prompts else None,
                  preserve_prompts=str(preserve_prompts) if preserve_prompts else None, evaluator=evaluator,
                  steps=steps, guidance=guidance,
                  cache_dir=str(cache_dir or Path.home() / ".cache" / "editflow") if cache else None, attack=attack,
                  attack_steps=attack_steps, attack_restarts=attack_restarts, preserve_images=preserve_images,
                  device=device, dtype=dtype_name(dtype), offload=offload,
                  nudity_protocol=NudityProtocolName(nudity_protocol).value, allow_download=allow_download)
    outcome = run_eval(job, progress_factory=bar)
    path, report, result = outcome.report_dir, outcome.gates, outcome.result
    if as_json:
        typer.echo((path / "report.json").read_text())
    else:
        for c in report.checks:
            mark = "pass" if c.passed else "FAIL"
            err.print(f"{mark}  {c.metric:28s} {c.reason}", highlight=False)
        typer.echo(json.dumps({"passed": report.passed, "report": str(path / "report.md"),
                               "harmonic_score": result.metrics.get("harmonic_score"),
                               "attack_success": result.metrics.get("attack_success"),
                               "attack_baseline": result.metrics.get("attack_baseline")}, indent=2))
    if not report.passed:
        raise typer.Exit(GATE_FAILED)
