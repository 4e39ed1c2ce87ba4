"""Gates: thresholds on evaluation metrics, per concept family, read from YAML.

A gate file (the packaged default: ``editflow/evaluation/default_gates.yaml``, linked from
``configs/gates/default.yaml`` in a checkout)::

    default:                       # applies to every family
      erasure_rate: {max: 0.05}
      specificity: {min: 0.95}
    families:                      # overrides per concept family
      identity:
        leakage: {max: 0.10}

Each entry names a metric of :mod:`editflow.evaluation.evaluate` and a ``min`` and/or ``max``
bound (inclusive). A gated metric that was not measured fails, with that as its reason: a gate
never passes on missing evidence; nor does a value that is not a finite number. ``null`` removes
an inherited gate. A :class:`GateReport` carries the gates it was judged with (``spec``), so a
report can be judged again without the gate file (``editflow registry add`` does).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from editflow.configfile import read_yaml
from editflow.errors import EditflowError

METRICS = (
    "erasure_rate", "leakage", "leakage_synonym", "leakage_paraphrase", "leakage_misspelling", "leakage_implicit",
    "specificity", "specificity_neighbours", "specificity_distant", "clip_score_target",
    "clip_score_preserved", "fid_preserved", "image_similarity_preserved", "memorization_score",
    "harmonic_score", "attack_success", "attack_baseline",
)
DEFAULT_GATES = Path("configs") / "gates" / "default.yaml"
PACKAGED_GATES = Path(__file__).with_name("default_gates.yaml")  # ships in the wheel (package data)


def default_gates_file() -> Path:
    """``configs/gates/default.yaml`` in the working directory (a deployment's own), else the one
    inside the installed package (a checkout's ``configs/gates/default.yaml`` links to it)."""
    here = Path.cwd() / DEFAULT_GATES
    return here if here.is_file() else PACKAGED_GATES


@dataclass(frozen=True)
class Bound:
    metric: str
    min: float | None = None
    max: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None}

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"{self.min} <= x <= {self.max}"
        return f">= {self.min}" if self.min is not None else f"<= {self.max}"


@dataclass(frozen=True)
class Check:
    metric: str
    value: float | None
    bound: str
    passed: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GateReport:
    family: str
    source: str
    checks: list[Check]
    spec: dict | None = field(default=None, repr=False)  # the gates judged with (Gates.to_dict())

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        out = {"passed": self.passed, "family": self.family, "source": self.source,
               "checks": [c.to_dict() for c in self.checks]}
        if self.spec is not None:
            out["spec"] = self.spec
        return out


def _finite(value) -> bool:
    if isinstance(value, (bool, str, bytes)):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _bounds(section, where: str) -> dict[str, Bound | None]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise EditflowError(f"gates: {where} must be a mapping of metric -> {{min, max}}")
    out: dict[str, Bound | None] = {}
    for metric, spec in section.items():
        if metric not in METRICS:
            raise EditflowError(f"gates: unknown metric {metric!r} in {where}; valid: {', '.join(METRICS)}")
        if spec is None:
            out[metric] = None
            continue
        if not isinstance(spec, dict) or not spec or set(spec) - {"min", "max"}:
            raise EditflowError(f"gates: {where}.{metric} needs 'min' and/or 'max' (got {spec!r})")
        try:
            lo = None if spec.get("min") is None else float(spec["min"])
            hi = None if spec.get("max") is None else float(spec["max"])
        except (TypeError, ValueError):
            raise EditflowError(f"gates: {where}.{metric} bounds must be numbers (got {spec!r})") from None
        if lo is not None and hi is not None and lo > hi:
            raise EditflowError(f"gates: {where}.{metric} has min {lo} > max {hi}")
        out[metric] = Bound(metric, lo, hi)
    return out


@dataclass
class Gates:
    default: dict[str, Bound | None]
    families: dict[str, dict[str, Bound | None]]
    source: str = "<inline>"

    @classmethod
    def from_dict(cls, data, source: str = "<inline>") -> Gates:
        if not isinstance(data, dict):
            raise EditflowError(f"gates: {source} must hold a mapping with 'default' and/or 'families'")
        unknown = set(data) - {"default", "families", "description"}
        if unknown:
            raise EditflowError(f"gates: unknown section(s) {sorted(unknown)} in {source}; "
                                "valid: default, families, description")
        fams = data.get("families") or {}
        if not isinstance(fams, dict):
            raise EditflowError(f"gates: 'families' in {source} must map family -> metrics")
        return cls(_bounds(data.get("default"), "default"),
                   {f: _bounds(v, f"families.{f}") for f, v in fams.items()}, source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Gates:
        path = Path(path) if path is not None else default_gates_file()
        try:
            return cls.from_dict(read_yaml(path, "gates"), str(path))
        except EditflowError as exc:
            message = str(exc)
            raise EditflowError(message if str(path) in message else f"{path}: {message}") from None

    def to_dict(self) -> dict:
        """The gates as data; ``Gates.from_dict(g.to_dict())`` judges exactly as ``g`` does."""
        def section(bounds: dict[str, Bound | None]) -> dict:
            return {m: None if b is None else b.to_dict() for m, b in bounds.items()}

        return {"default": section(self.default), "families": {f: section(b) for f, b in self.families.items()}}

    def bounds(self, family: str) -> list[Bound]:
        merged = {**self.default, **self.families.get(family, {})}
        return [b for b in merged.values() if b is not None]

    def judge(self, metrics: dict[str, float | None], family: str, absent: dict[str, str] | None = None) -> GateReport:
        checks = []
        for b in self.bounds(family):
            value = metrics.get(b.metric)
            if value is None:
                why = (absent or {}).get(b.metric, "not measured by this evaluation")
                checks.append(Check(b.metric, None, b.describe(), False, f"no value: {why}"))
                continue
            if not _finite(value):  # NaN compares False with both bounds: it would pass them
                checks.append(Check(b.metric, None, b.describe(), False, f"{value!r} is not a finite number"))
                continue
            low = b.min is not None and value < b.min
            high = b.max is not None and value > b.max
            if low or high:
                reason = f"{value:.4g} is {'below the minimum' if low else 'above the maximum'} " \
                         f"{b.min if low else b.max}"
            else:
                reason = f"{value:.4g} is within {b.describe()}"
            checks.append(Check(b.metric, value, b.describe(), not (low or high), reason))
        return GateReport(family, self.source, checks, self.to_dict())
