"""``editflow registry ...``: register evaluated patches, list and show versions, promote aliases.

Plugged into the ``editflow`` app through the ``editflow.cli`` entry point.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer

from editflow.cli.common import cli_errors as _cli_errors
from editflow.errors import EditflowError

app = typer.Typer(help="The MLflow registry of erasure patches: register, list, show, promote.",
                  no_args_is_help=True)

UriOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking URI (default: SQLite store under $EDITFLOW_HOME, ~/.editflow).")]


def cli_errors(fn):
    """One line on stderr, exit 1, for editflow's errors and MLflow's too (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            text = str(exc.message if hasattr(exc, "message") else exc).strip()
            raise EditflowError(f"registry: {text.splitlines()[0] if text else type(exc).__name__}") from None

    return _cli_errors(wrapper)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="registry")


@app.command("add")
@cli_errors
def add(
    patch: Annotated[Path, typer.Option("--patch", help="Patch file (.safetensors).")],
    report: Annotated[Path, typer.Option("--report", help="Its `editflow eval` report folder.")],
    name: Annotated[str, typer.Option("--name", help="Registered model name.")],
    gates: Annotated[Path | None, typer.Option(
        "--gates", help="Gates the report's metrics must also pass here (default: the default gates).")] = None,
    tracking_uri: UriOpt = None,
):
    """Log an evaluated patch; if its gates passed, register it as a new version (alias: candidate).

    The report must record this patch's hash (`editflow eval` writes it); its metrics are judged
    again, with the gates it records and with `--gates`.

    Exit 3 when the gates failed (the run is logged, no version is made).
    """
    from registry.register import register_patch
    from registry.store import Store

    reg = register_patch(patch, report, name, Store.resolve(tracking_uri), gates=gates)
    typer.echo(json.dumps(reg.to_dict(), indent=2))
    if not reg.passed:
        raise typer.Exit(3)


@app.command("list")
@cli_errors
def list_models(tracking_uri: UriOpt = None):
    """Registered models with their aliases and latest version."""
    from registry.register import describe
    from registry.store import Store

    typer.echo(json.dumps(describe(None, Store.resolve(tracking_uri)), indent=2))


@app.command("show")
@cli_errors
def show(name: Annotated[str, typer.Argument(help="Registered model name.")], tracking_uri: UriOpt = None):
    """One model's versions: aliases, editflow tags (base, concepts, method, gates), key metrics."""
    from registry.register import describe
    from registry.store import Store

    typer.echo(json.dumps(describe(name, Store.resolve(tracking_uri)), indent=2))


@app.command("promote")
@cli_errors
def promote_cmd(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    alias: Annotated[str, typer.Option(help="Alias to set.")] = "champion",
    tracking_uri: UriOpt = None,
):
    """Point an alias (default: champion) at a version that passed its gates."""
    from registry.register import promote
    from registry.store import Store

    promote(name, version, alias, Store.resolve(tracking_uri))
    typer.echo(f"{name}@{alias} -> version {version}")
