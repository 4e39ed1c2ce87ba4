"""Extension points found through package entry points, so the core never imports its edges.

* ``editflow.cli``: callables ``register(app)`` that add commands to the Typer app
  (``registry`` adds ``editflow registry ...``).
* ``editflow.model_uri``: per URI scheme, a callable ``resolve(uri) -> (base, patch_file)``
  (``registry`` resolves ``models:/NAME@ALIAS``), so ``--model models:/...`` works in any command
  that loads a model.
* ``editflow.flows``: flows by name (``flows`` provides ``erase``: ``editflow erase --register``).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

from editflow.errors import EditflowError


def cli_extensions() -> list:
    return [ep.load() for ep in sorted(entry_points(group="editflow.cli"), key=lambda e: e.name)]


def is_model_uri(model: str | None) -> bool:
    return bool(model) and "://" not in model and ":/" in model and not Path(model).exists()


def run_flow(flow_name: str, **kwargs):
    """Run the flow registered as entry point ``editflow.flows:<name>`` (``flows`` provides ``erase``)."""
    found = [ep for ep in entry_points(group="editflow.flows") if ep.name == flow_name]
    if not found:
        raise EditflowError(f"no flow named {flow_name!r} installed (the flows package provides them)")
    return found[0].load()(**kwargs)


def resolve_model_uri(uri: str) -> tuple[str | None, Path]:
    """(base model for ``load_pipeline``, local patch file) for a registry URI such as ``models:/x@champion``."""
    scheme = uri.split(":/", 1)[0]
    found = [ep for ep in entry_points(group="editflow.model_uri") if ep.name == scheme]
    if not found:
        raise EditflowError(f"no resolver for {scheme}:/ URIs (is the registry extra installed?)")
    return found[0].load()(uri)
