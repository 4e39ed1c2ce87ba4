"""``editflow invert``: learn a token for a concept from a few images (textual inversion)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from editflow.cli.common import (
    MAX_IMAGES,
    MAX_SEED,
    MAX_TRAIN_STEPS,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    bar,
    check_out,
    cli_errors,
    finite,
    placement,
    save_image,
)
from editflow.errors import EditflowError


def register(app: typer.Typer) -> None:
    app.command("invert")(invert_cmd)


@cli_errors
def invert_cmd(
    token: Annotated[str, typer.Option(help="The new token, e.g. '<my-concept>' (must not be a known word).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Embedding file to write (.safetensors, diffusers "
                                                          "textual-inversion format).")],
    images: Annotated[Path | None, typer.Option(help="Folder with a few images of the concept.")] = None,
    prompt: Annotated[str | None, typer.Option(
        help="Instead of --images: let the model draw the concept from this prompt.")] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=MAX_IMAGES, help="Images drawn for --prompt.")] = 16,
    steps: Annotated[int, typer.Option(min=1, max=MAX_TRAIN_STEPS, help="Gradient steps.")] = 200,
    lr: Annotated[float, typer.Option(min=1e-9, callback=finite, help="Learning rate of the embedding.")] = 0.02,
    vectors: Annotated[int, typer.Option(min=1, max=64, help="Embedding vectors behind the token.")] = 1,
    init_word: Annotated[str | None, typer.Option(
        help="Start from this word's embedding (default: the vocabulary's mean embedding).")] = None,
    seed: Annotated[int, typer.Option(
        min=0, max=MAX_SEED, help="Seed of the images drawn for --prompt and of the training.")] = 0,
    patch: Annotated[Path | None, typer.Option(
        help="Invert against this patch applied (the attack on an erased model).")] = None,
    preview: Annotated[Path | None, typer.Option(
        help="Also write a grid: 8 images drawn with the learned token ('a picture of a TOKEN').")] = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
):
    """Learn TOKEN from images of a concept; the text encoder and UNet stay frozen.

    Use the file with `editflow erase --images` (as an erase target), `pipe.load_textual_inversion`
    in diffusers, or pass --patch to see whether an erased concept comes back.
    """
    from editflow.edits import Patch
    from editflow.inversion import InversionConfig, invert, learned_tokens, load_images
    from editflow.models.pipeline import generate, load_pipeline, make_grid
    from editflow.models.tokens import check_token_name

    place = placement(device, dtype)
    check_token_name(token, "--token")
    if (images is None) == (prompt is None):
        raise EditflowError("give the concept as --images DIR or as --prompt TEXT (one of them)")
    if prompt is not None and not prompt.strip():
        raise EditflowError("empty prompt")
    check_out(out)
    check_out(preview, "--preview", kind="image")
    pipe = load_pipeline(model, device=place.device, dtype=place.dtype)
    p = Patch.load(patch) if patch is not None else None
    if images is not None:
        shown = load_images(images)
    else:
        b = bar(n, "draw the concept")
        shown = generate(pipe, [prompt] * n, [seed * 100_003 + i for i in range(n)], progress=b.update)
        b.close()
    config = InversionConfig(steps=steps, lr=lr, vectors=vectors, init_word=init_word, seed=seed)
    b = bar(steps, f"invert {token}")
    tok = invert(pipe, shown, token, config, patch=p,
                 progress=lambda k, loss: (b.update(k), b.set_postfix(loss=f"{loss:.4f}", refresh=False)))
    b.close()
    tok.metadata.update({"source": str(images) if images is not None else f"prompt: {prompt}",
                         "base_model": str(model or "embedded")})
    path = tok.save(out)
    summary = {"embedding": str(path), "token": token, "images": len(shown),
               "loss_first": round(tok.metadata["loss_first"], 4), "loss_last": round(tok.metadata["loss_last"], 4)}
    if preview is not None:
        with learned_tokens(pipe, tok), (p.apply(pipe) if p is not None else nullcontext()):
            drawn = generate(pipe, [f"a picture of a {token}"] * 8, list(range(8)))
        save_image(make_grid(drawn, 8, 4), preview)
        summary["preview"] = str(preview)
    typer.echo(json.dumps(summary, indent=2))

