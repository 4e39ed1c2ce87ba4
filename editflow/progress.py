"""Progress bars for long work (generation, training, fine-tuning): tqdm on stderr, silent when
``EDITFLOW_QUIET`` is set. Imports no model library."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def quiet() -> bool:
    return bool(os.environ.get("EDITFLOW_QUIET"))


def progress(total: int, desc: str, initial: int = 0, disable: bool | None = None):
    """A tqdm bar on stderr; silent when ``EDITFLOW_QUIET`` is set."""
    return tqdm(total=total, desc=desc, initial=initial, disable=quiet() if disable is None else disable,
                dynamic_ncols=True, leave=False)


def track(iterable, desc: str):
    """Iterate with a progress bar (same quiet switch as :func:`progress`)."""
    return tqdm(iterable, desc=desc, disable=quiet(), dynamic_ncols=True, leave=False)
