"""The ``editflow`` command line.

Errors are one line ``error: ...`` on stderr: exit 1 for a runtime failure (missing model, bad
file, unwritable output), exit 2 for bad usage (Typer's own checks, reported by
:class:`~editflow.cli.common.EditflowGroup`), exit 3 when a check or gate finds a number outside
its bound. Output paths are checked before any work; sizes have generous bounds.
Progress bars go to stderr; results to stdout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from editflow.cli import edit, evaluate, invert, world
from editflow.cli.common import (
    MAX_IMAGES,
    MAX_SAMPLER_STEPS,
    MAX_SCALE,
    MAX_SEED,
    DeviceOpt,
    DtypeOpt,
    EditflowGroup,
    ModelOpt,
    OffloadOpt,
    bar,
    cli_errors,
    drawing,
    finite,
    placement,
    save_image,
)
from editflow.plugins import is_model_uri, resolve_model_uri

app = typer.Typer(
    name="editflow",
    cls=EditflowGroup,
    help="Erase concepts from text-to-image diffusion models, prove it, ship the patch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(world.app, name="world")


edit.register(app)
evaluate.register(app)
invert.register(app)


@app.command()
@cli_errors
def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text prompt.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the image grid (PNG, JPEG, ...).")],
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Diffusers folder, hub id (local cache only) or registered patch "
                              "(models:/NAME@ALIAS). Default: the embedded model.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=MAX_IMAGES, help="Number of images.")] = 8,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED,
                                      help="Seed of the first image; image i uses seed + i.")] = 0,
    steps: Annotated[int, typer.Option(min=1, max=MAX_SAMPLER_STEPS, help="Sampler steps.")] = 25,
    guidance: Annotated[float, typer.Option(min=0.0, callback=finite,
                                            help="Classifier-free guidance scale.")] = 5.0,
    cols: Annotated[int, typer.Option(min=1, help="Grid columns.")] = 8,
    scale: Annotated[int, typer.Option(min=1, max=MAX_SCALE, help="Upscale factor of the grid (nearest).")] = 1,
    allow_download: Annotated[bool, typer.Option(help="Let a hub id be fetched from the hub.")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offload: OffloadOpt = False,
):
    """Generate a seeded grid of images for one prompt."""
    from editflow.models.pipeline import GenerationConfig, load_pipeline, make_grid
    from editflow.models.pipeline import generate as run

    place = drawing(prompt, out, device, dtype, offload)
    patch = None
    if is_model_uri(model):  # a registered patch: its base, with the patch applied
        from editflow.edits import Patch

        model, patch_file = resolve_model_uri(model)
        patch = Patch.load(patch_file)
    pipe = load_pipeline(model, device=place.device, dtype=place.dtype, offload=offload,
                         allow_download=allow_download)
    if patch is not None:
        patch.apply(pipe)
    b = bar(n, "generate")
    images = run(pipe, [prompt] * n, [seed + i for i in range(n)],
                 GenerationConfig(steps=steps, guidance=guidance), progress=b.update)
    b.close()
    save_image(make_grid(images, min(cols, n), scale), out)
    typer.echo(str(out))


@app.command()
@cli_errors
def info(
    model: ModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    allow_download: Annotated[bool, typer.Option(help="Let a hub id be fetched from the hub.")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
):
    """Architecture summary: cross-attention layers found, text encoder sizes, latent shape."""
    from editflow.models.pipeline import describe, load_pipeline

    place = placement(device, dtype)
    d = describe(load_pipeline(model, device=place.device, dtype=place.dtype, allow_download=allow_download))
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    for k, v in d.items():
        if k != "cross_attention_names":
            typer.echo(f"{k:24s} {v}")


def load_extensions(target: typer.Typer = app) -> typer.Typer:
    """Add the commands of installed extensions (``editflow.cli`` entry points), once."""
    from editflow.plugins import cli_extensions

    if not getattr(target, "_editflow_extensions", False):
        for register in cli_extensions():
            register(target)
        target._editflow_extensions = True
    return target


def main() -> None:
    load_extensions(app)
    app()
