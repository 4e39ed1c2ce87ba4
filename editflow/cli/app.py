"""The ``editflow`` command line.

Errors are one line on stderr: exit 1 for a runtime failure (missing model, bad file), exit 2
for bad usage (Typer's own checks). Progress bars go to stderr; results to stdout.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from editflow.errors import EditflowError

app = typer.Typer(
    name="editflow",
    help="Erase concepts from text-to-image diffusion models, prove it, ship the patch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
world_app = typer.Typer(help="The embedded world: render it, train its model, check its fidelity.",
                        no_args_is_help=True)
app.add_typer(world_app, name="world")

err = Console(stderr=True)

ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Diffusers folder or hub id (local cache only). Default: the embedded model.")]


def cli_errors(fn):
    """Report expected failures as one line on stderr and exit 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (EditflowError, ValueError, FileNotFoundError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            err.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _bar(total: int, desc: str):
    from editflow.training.common import progress

    return progress(total, desc)


@app.command()
@cli_errors
def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text prompt.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the image grid (PNG).")],
    model: ModelOpt = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")] = 0,
    steps: Annotated[int, typer.Option(min=1, help="Sampler steps.")] = 25,
    guidance: Annotated[float, typer.Option(min=0.0, help="Classifier-free guidance scale.")] = 5.0,
    cols: Annotated[int, typer.Option(min=1, help="Grid columns.")] = 8,
    scale: Annotated[int, typer.Option(min=1, help="Upscale factor of the grid (nearest).")] = 1,
    allow_download: Annotated[bool, typer.Option(help="Let a hub id be fetched from the hub.")] = False,
):
    """Generate a seeded grid of images for one prompt."""
    from editflow.models.pipeline import GenerationConfig, load_pipeline, make_grid
    from editflow.models.pipeline import generate as run

    if not prompt.strip():
        raise EditflowError("empty prompt")
    pipe = load_pipeline(model, allow_download=allow_download)
    bar = _bar(n, "generate")
    images = run(pipe, [prompt] * n, [seed + i for i in range(n)],
                 GenerationConfig(steps=steps, guidance=guidance), progress=bar.update)
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, min(cols, n), scale).save(out)
    typer.echo(str(out))


@app.command()
@cli_errors
def info(
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    allow_download: Annotated[bool, typer.Option(help="Let a hub id be fetched from the hub.")] = False,
):
    """Architecture summary: cross-attention layers found, text encoder sizes, latent shape."""
    from editflow.models.pipeline import describe, load_pipeline

    d = describe(load_pipeline(model, allow_download=allow_download))
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        if k != "cross_attention_names":
            typer.echo(f"{k:24s} {v}")


@world_app.command("render")
@cli_errors
def world_render(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG grid to write.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 32,
    seed: Annotated[int, typer.Option(help="Scene seed.")] = 0,
    scale: Annotated[int, typer.Option(min=1, help="Upscale factor (nearest).")] = 4,
):
    """Render random world scenes and print their captions (ground truth for the generator)."""
    from editflow.models.pipeline import make_grid
    from editflow.world import DEFAULT_WORLD, render, sample_batch

    batch = sample_batch(DEFAULT_WORLD, n, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    make_grid([render(s, DEFAULT_WORLD) for s in batch.scenes], min(8, n), scale).save(out)
    for c in batch.captions:
        typer.echo(c)


@world_app.command("train")
@cli_errors
def world_train(
    config: Annotated[Path, typer.Option(help="Training recipe (YAML).")] = Path("configs/world/embedded.yaml"),
    work_dir: Annotated[Path, typer.Option(help="Checkpoints and caches (resumable).")] = Path(".work/embedded"),
    out: Annotated[Path, typer.Option(help="Where the trained pipeline and evaluator go.")] = None,
    until: Annotated[str, typer.Option(
        help="Last stage: tokenizer, text_encoder, vae, evaluator, unet, export.")] = "export",
    unet_max_steps: Annotated[int | None, typer.Option(
        help="Stop the UNet stage after this many steps (a re-run resumes).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads.")] = 2,
):
    """Train the embedded model and evaluator, seeded and resumable (re-run to continue)."""
    import torch

    from editflow.models.pipeline import embedded_dir
    from editflow.training.embedded import train_embedded
    from editflow.training.recipe import Recipe
    from editflow.world import DEFAULT_WORLD

    if not config.is_file():
        raise EditflowError(f"recipe not found: {config}")
    torch.set_num_threads(threads)
    timings = train_embedded(DEFAULT_WORLD, Recipe.from_yaml(config), work_dir, out or embedded_dir(),
                             until=until, unet_max_steps=unet_max_steps)
    typer.echo(json.dumps({"seconds": timings}))


@world_app.command("check")
@cli_errors
def world_check(
    model: ModelOpt = None,
    evaluator: Annotated[Path | None, typer.Option(help="open_clip evaluator folder. Default: embedded.")] = None,
    per_class: Annotated[int, typer.Option(min=1, help="Generated images per prompted class.")] = 12,
    eval_per_class: Annotated[int, typer.Option(min=1, help="Rendered images per class for the evaluator.")] = 60,
    steps: Annotated[int, typer.Option(min=1)] = 25,
    guidance: Annotated[float, typer.Option(min=0.0)] = 5.0,
    skip_generator: Annotated[bool, typer.Option(help="Only measure the evaluator.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
):
    """Evaluator accuracy on rendered images and generator fidelity, per concept family."""
    from editflow.evaluation.world_check import evaluator_accuracy, generator_fidelity
    from editflow.models.evaluator import Evaluator
    from editflow.models.pipeline import GenerationConfig, embedded_dir, load_pipeline
    from editflow.world import DEFAULT_WORLD

    judge = Evaluator.from_dir(evaluator or embedded_dir() / "evaluator")
    accuracy = evaluator_accuracy(judge, DEFAULT_WORLD, eval_per_class)
    report: dict = {"evaluator": {f: s.to_dict() for f, s in accuracy.items()}}
    if not skip_generator:
        pipe = load_pipeline(model)
        n = per_class * sum(1 for f in ("object", "style", "identity")
                            for c in DEFAULT_WORLD.family(f) if "null" not in c.tags)
        bar = _bar(n, "generate")
        fid = generator_fidelity(pipe, judge, DEFAULT_WORLD, per_class,
                                 GenerationConfig(steps=steps, guidance=guidance), progress=bar.update)
        bar.close()
        report["generator"] = {f: s.to_dict() for f, s in fid.items()}
        report["sampler"] = {"steps": steps, "guidance": guidance, "per_class": per_class}
    report["passed"] = all(v["passed"] for part in ("evaluator", "generator") for v in report.get(part, {}).values())
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for part in ("evaluator", "generator"):
            for fam, s in report.get(part, {}).items():
                mark = "ok" if s["passed"] else "BELOW BAR"
                typer.echo(f"{part:10s} {fam:9s} {s['accuracy']:.3f} (bar {s['bar']}) {mark}")
    raise typer.Exit(0 if report["passed"] else 3)


def main() -> None:
    app()
