"""Shared pieces of the CLI: the error reporter, stderr console and progress bars."""

from __future__ import annotations

import functools
from typing import Annotated

import typer
from rich.console import Console

from editflow.errors import EditflowError

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


def bar(total: int, desc: str):
    from editflow.training.common import progress

    return progress(total, desc)


def quiet_libraries() -> None:
    """Silence diffusers/transformers loading bars and info logs: the CLI shows its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
