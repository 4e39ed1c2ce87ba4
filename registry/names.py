"""Names that end up in the registry (registered models, policies): checked before anything is written.

MLflow refuses some names only after a run and its artifacts were logged, and a name also
becomes part of paths (``$EDITFLOW_HOME/patches/<name>``, artifact folders), so editflow accepts
a plain set: letters, digits, ``-``, ``_`` and ``.``; not empty, not ``.`` or ``..``, at most
:data:`MAX_LENGTH` characters.

    from registry.names import check_name
    check_name(policy_name, "policy name")   # returns the name, or raises EditflowError
"""

from __future__ import annotations

import re

from editflow.errors import EditflowError

MAX_LENGTH = 128
_ALLOWED = re.compile(r"[A-Za-z0-9._-]+")


def check_name(name: str, what: str = "registered model name") -> str:
    """``name`` when it is a safe registry name; one-line :class:`EditflowError` otherwise."""
    if not isinstance(name, str) or not name:
        raise EditflowError(f"empty {what}")
    if name in (".", ".."):
        raise EditflowError(f"{what} {name!r} is not allowed")
    if len(name) > MAX_LENGTH:
        raise EditflowError(f"{what} is {len(name)} characters long; at most {MAX_LENGTH}")
    if not _ALLOWED.fullmatch(name):
        bad = sorted({c for c in name if not _ALLOWED.fullmatch(c)})
        raise EditflowError(f"{what} {name!r} has character(s) {''.join(bad)!r}; "
                            "use letters, digits, '-', '_' and '.'")
    return name
