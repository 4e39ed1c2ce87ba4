"""Shared pieces of the CLI: the error reporter, output-path checks, bounds, stderr console,
progress bars and the ``--device`` / ``--dtype`` / ``--offload`` options."""

from __future__ import annotations

import functools
import math
import os
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from editflow.errors import EditflowError

if TYPE_CHECKING:
    from editflow.models.device import Placement

err = Console(stderr=True)

ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Diffusers folder or hub id (local cache only). Default: the embedded model.")]


class NudityProtocolName(str, Enum):
    """The keys of :data:`editflow.evaluation.detectors.NUDITY_PROTOCOLS` (a test checks they agree)."""

    i2p = "i2p"
    unlearndiffatk = "unlearndiffatk"


NudityProtocolOpt = Annotated[NudityProtocolName, typer.Option(
    case_sensitive=False, help="Real models, nudity: NudeNet protocol: i2p (score >= 0.6 on 4 exposed classes, as "
                               "ESD/MACE count) or unlearndiffatk (>= 0.45 on 9 classes); the report records it.")]


class Dtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


def device_name(value: str | None) -> str | None:
    """Typer callback for ``--device``: a name the resolver knows (the hardware is checked later, exit 1)."""
    from editflow.models.device import check_placement

    if value is None:
        return None
    try:
        check_placement(value, None)
    except EditflowError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value.strip().lower()


DeviceOpt = Annotated[str | None, typer.Option(
    "--device", callback=device_name, metavar="auto|cpu|cuda|cuda:N|mps",
    help="Where the model runs. auto: CUDA when available, else the CPU. Default: $EDITFLOW_DEVICE, else auto.")]
DtypeOpt = Annotated[Dtype | None, typer.Option(
    "--dtype", case_sensitive=False,
    help="Precision of the model's weights and activations. auto: float16 on CUDA, float32 on the CPU "
         "(bfloat16 also runs on the CPU). Default: $EDITFLOW_DTYPE, else auto.")]
OffloadOpt = Annotated[bool, typer.Option(
    "--offload", help="Keep the models on the CPU and move each to the GPU only while it runs (diffusers model "
                      "CPU offload, accelerate): far less GPU memory, slower. Needs --device cuda (or mps).")]


def placement(device: str | None, dtype: Dtype | str | None, offload: bool = False, *,
              quiet: bool = True) -> Placement:
    """Resolve ``--device`` / ``--dtype`` (and their environment variables) now, before any work: a device
    this machine lacks, or ``--offload`` on the CPU, is a one-line error (exit 1). Every command that
    runs a model calls it first, so this is where the libraries' own loading bars are silenced
    (:func:`quiet_libraries`), not at start-up: ``--help`` imports no model library. ``quiet=False``
    leaves that to the caller: it needs torch only, so a flow can import diffusers and friends
    while Prefect's server starts (:func:`flows.erase.warm_imports`)."""
    from editflow.models.device import Placement, check_offload

    if quiet:
        quiet_libraries()
    place = Placement.resolve(device, dtype.value if isinstance(dtype, Dtype) else dtype)
    if offload:
        check_offload(place.device)
    return place


def drawing(prompt: str, out, device: str | None, dtype: Dtype | str | None, offload: bool = False) -> Placement:
    """The checks of a command that draws one prompt into an image file, before any work: where it
    runs (:func:`placement`), a prompt that says something, an image path that can be written."""
    place = placement(device, dtype, offload)
    if not prompt.strip():
        raise EditflowError("empty prompt")
    check_out(out, kind="image")
    return place


def dtype_name(dtype: Dtype | str | None) -> str | None:
    """The plain string a job carries (JSON-able); ``None`` leaves it to ``$EDITFLOW_DTYPE`` / auto."""
    return dtype.value if isinstance(dtype, Dtype) else dtype

# Generous but sane bounds on sizes (Typer `max=`): beyond them a run would not finish, or not fit in memory.
MAX_IMAGES = 10_000  # images drawn by one command (per row, per concept)
MAX_SAMPLER_STEPS = 1_000  # sampler steps per image (the training schedules have 1000 timesteps)
MAX_TRAIN_STEPS = 1_000_000  # gradient steps of a training or fine-tuning stage
MAX_SCALE = 64  # nearest upscaling of a grid
MAX_SEED = 2**32 - 1


def report(message: str) -> None:
    """One line on stderr: ``error: <message>``."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def cli_errors(fn):
    """Report expected failures as one line on stderr and exit 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (EditflowError, ValueError, OSError) as exc:  # OSError: a disk, permission or path failure
            report(_first_line(exc))
            raise typer.Exit(1) from None

    return wrapper


class EditflowGroup(TyperGroup):
    """The root command. Usage errors (Typer's own checks, exit 2) are one line ``error: ...`` on
    stderr, as runtime errors are (exit 1), instead of Click's usage block; arguments that are not
    valid UTF-8 text (undecodable bytes in argv) are refused the same way."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        args = sys.argv[1:] if args is None else list(args)
        for arg in args:
            if not is_utf8(arg):
                report(f"argument {shown(arg)} is not valid UTF-8 text")
                sys.exit(2)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # Typer's (vendored) Click errors: usage errors have exit code 2
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed
                sys.exit(2)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None and exc.exit_code == 2 else ""
            report(_first_line(exc.format_message()) + hint)
            sys.exit(exc.exit_code)
        except typer.Abort:
            report("aborted")
            sys.exit(1)
        sys.exit(code if type(code) is int else 0)


def is_utf8(text: str) -> bool:
    """False for strings holding lone surrogates (undecodable bytes Python kept from argv or a path)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str) -> str:
    """``text`` quoted and printable even with undecodable bytes (shown as ``\\xff``)."""
    return "'" + os.fsencode(text).decode("utf-8", "backslashreplace") + "'"


def finite(value: float | None) -> float | None:
    """Typer callback for float options: refuse nan and inf (they pass min/max checks)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def check_out(path: Path | None, option: str = "--out", kind: str = "file") -> Path | None:
    """Refuse an output path that cannot be written, before any work is done; creates nothing.

    ``kind``: ``file`` (a file to create or replace), ``image`` (a file with an image suffix) or
    ``dir`` (a folder to create or fill). The nearest existing folder above it must be a folder
    this process can create files in (probed with an unnamed temporary file).
    """
    if path is None:
        return None
    p = Path(path).expanduser()
    where = f"{option} {path}"
    if kind == "dir":
        if p.exists() and not p.is_dir():
            raise EditflowError(f"{where}: exists and is not a folder")
    else:
        if p.is_dir():
            raise EditflowError(f"{where}: is a folder; give a file name")
        if p.exists() and not p.is_file():
            raise EditflowError(f"{where}: exists and is not a regular file")
        if kind == "image" and p.suffix.lower() not in IMAGE_SUFFIXES:
            raise EditflowError(f"{where}: give an image file name ({', '.join(IMAGE_SUFFIXES[:3])}, ...)")
    folder = p if kind == "dir" else p.parent
    while not folder.is_dir():
        # a file (or a dangling link) where a folder must be
        if folder.exists() or folder.is_symlink() or folder.parent == folder:
            raise EditflowError(f"{where}: {folder} is not a folder")
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise EditflowError(f"{where}: cannot write in {folder} ({exc.strerror or exc})") from None
    return path


def save_image(image, out: Path) -> Path:
    """Write a PIL image atomically (a temporary file renamed into place; nothing half-written is left)."""
    from PIL import Image

    out = Path(out)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise EditflowError(f"{out}: unknown image file type {out.suffix!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        image.save(tmp, format=fmt)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def bar(total: int, desc: str):
    from editflow.progress import progress

    return progress(total, desc)


def quiet_libraries() -> None:
    """Silence diffusers/transformers loading bars and info logs: the CLI shows its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
