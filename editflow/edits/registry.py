"""Registry of edit methods: one folder per method registers itself by name (as peft does)."""

from __future__ import annotations

from typing import Protocol


class EditMethod(Protocol):
    """An erasure method: ``compute`` returns a :class:`~editflow.edits.patch.Patch` and leaves
    the pipeline as it found it (compute, then apply). ``targets`` picks the edited modules
    (default :class:`~editflow.edits.targets.TargetSpec`); ``cache`` is an optional
    :class:`~editflow.edits.streaming.PreserveCache`. ``kind`` says how it computes: ``CLOSED_FORM``
    (a solve; the fine-tuning stages start from its patch) or ``GRADIENT`` (trained steps)."""

    name: str
    kind: str
    config_class: type

    def compute(self, pipe, request, config, targets=None, cache=None, progress=None): ...


CLOSED_FORM, GRADIENT = "closed_form", "gradient"
_METHODS: dict[str, EditMethod] = {}


def register(method: EditMethod) -> EditMethod:
    if not method.name or method.name in _METHODS:
        raise ValueError(f"edit method name {method.name!r} is empty or already registered")
    if getattr(method, "kind", None) not in (CLOSED_FORM, GRADIENT):
        raise ValueError(f"edit method {method.name!r}: kind must be {CLOSED_FORM!r} or {GRADIENT!r}")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> EditMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown edit method {name!r}; valid: {', '.join(sorted(_METHODS))}") from None


def available() -> list[str]:
    return sorted(_METHODS)
