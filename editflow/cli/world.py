"""``editflow world ...``: render the embedded world, train its model, check its fidelity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from editflow.cli.common import (
    MAX_IMAGES,
    MAX_SAMPLER_STEPS,
    MAX_SCALE,
    MAX_SEED,
    MAX_TRAIN_STEPS,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OffloadOpt,
    bar,
    check_out,
    cli_errors,
    finite,
    placement,
    save_image,
)
from editflow.errors import EditflowError

app = typer.Typer(help="The embedded world: render it, train its model, check its fidelity.", no_args_is_help=True)


@app.command("render")
@cli_errors
def world_render(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG grid to write.")],
    n: Annotated[int, typer.Option("--n", min=1, max=MAX_IMAGES, help="Number of scenes.")] = 32,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Scene seed.")] = 0,
    scale: Annotated[int, typer.Option(min=1, max=MAX_SCALE, help="Upscale factor (nearest).")] = 4,
):
    """Render random world scenes and print their captions (ground truth for the generator)."""
    from editflow.models.pipeline import make_grid
    from editflow.world import DEFAULT_WORLD, render, sample_batch

    check_out(out, kind="image")
    batch = sample_batch(DEFAULT_WORLD, n, seed)
    save_image(make_grid([render(s, DEFAULT_WORLD) for s in batch.scenes], min(8, n), scale), out)
    for c in batch.captions:
        typer.echo(c)


@app.command("train")
@cli_errors
def world_train(
    config: Annotated[Path, typer.Option(help="Training recipe (YAML).")] = Path("configs/world/embedded.yaml"),
    work_dir: Annotated[Path, typer.Option(help="Checkpoints and caches (resumable).")] = Path(".work/embedded"),
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Where the trained pipeline/ and evaluator/ go (a folder). To make them the embedded "
                            "model, copy both into editflow/assets/embedded/ of a source checkout (or pass "
                            "--out editflow/assets/embedded there); or use --model OUT/pipeline.")
    ] = Path("embedded-model"),
    until: Annotated[str, typer.Option(
        help="Last stage: tokenizer, text_encoder, vae, evaluator, unet, export.")] = "export",
    unet_max_steps: Annotated[int | None, typer.Option(
        min=1, max=MAX_TRAIN_STEPS, help="Stop the UNet stage after this many steps (a re-run resumes).")] = None,
    threads: Annotated[int, typer.Option(min=1, max=1024, help="torch CPU threads.")] = 2,
):
    """Train the embedded model and evaluator, seeded and resumable (re-run to continue).

    Checkpoints in --work-dir hold tensors and plain values only (loaded weights-only: a file
    that needs unpickling of code is refused). Training runs on the CPU in float32 (--threads
    sets its threads); it takes no --device or --dtype.
    """
    import torch

    from editflow.training.embedded import STAGES, train_embedded
    from editflow.training.recipe import Recipe
    from editflow.world import DEFAULT_WORLD

    if not config.is_file():
        raise EditflowError(f"recipe not found: {config}")
    if until not in STAGES:
        raise EditflowError(f"--until {until!r}: unknown stage; valid: {', '.join(STAGES)}")
    check_out(work_dir, "--work-dir", kind="dir")
    check_out(out, kind="dir")
    torch.set_num_threads(threads)
    timings = train_embedded(DEFAULT_WORLD, Recipe.from_yaml(config), work_dir, out,
                             until=until, unet_max_steps=unet_max_steps)
    typer.echo(json.dumps({"seconds": timings}))


@app.command("check")
@cli_errors
def world_check(
    model: ModelOpt = None,
    evaluator: Annotated[Path | None, typer.Option(help="open_clip evaluator folder. Default: embedded.")] = None,
    per_class: Annotated[int, typer.Option(
        min=1, max=MAX_IMAGES, help="Generated images per prompted class.")] = 12,
    eval_per_class: Annotated[int, typer.Option(
        min=1, max=MAX_IMAGES, help="Rendered images per class for the evaluator.")] = 60,
    steps: Annotated[int, typer.Option(min=1, max=MAX_SAMPLER_STEPS, help="Sampler steps.")] = 25,
    guidance: Annotated[float, typer.Option(min=0.0, callback=finite, help="Classifier-free guidance scale.")] = 5.0,
    skip_generator: Annotated[bool, typer.Option(help="Only measure the evaluator.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offload: OffloadOpt = False,
):
    """Evaluator accuracy on rendered images and generator fidelity, per concept family."""
    from editflow.evaluation.world_check import evaluator_accuracy, fidelity_images, generator_fidelity
    from editflow.models.evaluator import Evaluator
    from editflow.models.pipeline import GenerationConfig, embedded_dir, load_pipeline
    from editflow.world import DEFAULT_WORLD

    place = placement(device, dtype, offload)
    judge = Evaluator.from_dir(evaluator or embedded_dir() / "evaluator", place.device)  # float32 anywhere
    accuracy = evaluator_accuracy(judge, DEFAULT_WORLD, eval_per_class)
    report: dict = {"evaluator": {f: s.to_dict() for f, s in accuracy.items()}}
    if not skip_generator:
        pipe = load_pipeline(model, device=place.device, dtype=place.dtype, offload=offload)
        b = bar(fidelity_images(DEFAULT_WORLD, per_class), "generate")
        fid = generator_fidelity(pipe, judge, DEFAULT_WORLD, per_class,
                                 GenerationConfig(steps=steps, guidance=guidance), progress=b.update)
        b.close()
        report["generator"] = {f: s.to_dict() for f, s in fid.items()}
        report["sampler"] = {"steps": steps, "guidance": guidance, "per_class": per_class}
    report["passed"] = all(v["passed"] for part in ("evaluator", "generator") for v in report.get(part, {}).values())
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for part in ("evaluator", "generator"):
            for fam, s in report.get(part, {}).items():
                mark = "ok" if s["passed"] else "BELOW BAR"
                typer.echo(f"{part:10s} {fam:16s} {s['accuracy']:.3f} (bar {s['bar']}) {mark}")
    raise typer.Exit(0 if report["passed"] else 3)
