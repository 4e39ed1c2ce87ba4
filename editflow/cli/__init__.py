"""Command line interface (``editflow``)."""

from editflow.cli.app import app, main

__all__ = ["app", "main"]
