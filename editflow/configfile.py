"""Reading the project's YAML files (gates, policies) with one-line errors."""

from __future__ import annotations

from pathlib import Path

import yaml

from editflow.errors import EditflowError


def read_yaml(path: str | Path, what: str):
    """The parsed content of ``path``; a missing file or bad YAML is an :class:`EditflowError`
    naming ``what`` the file was meant to be ("gates", "policy")."""
    path = Path(path)
    if not path.is_file():
        raise EditflowError(f"{what} file not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise EditflowError(f"{what}: {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise EditflowError(f"{what}: {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
