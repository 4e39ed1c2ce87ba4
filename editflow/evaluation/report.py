"""Gate reports on disk: ``report.json`` (machine-readable), ``report.md`` (for a reviewer) and
before/after grids (original row over patched row, same seeds), written atomically as one folder."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from editflow.evaluation.evaluate import EvalResult
from editflow.evaluation.gates import GateReport
from editflow.models.pipeline import make_grid

GRID_ROLES = ("target", "leakage", "neighbour", "distant")


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def grids(result: EvalResult, per_row: int = 8, scale: int = 4) -> dict[str, object]:
    """One grid per role: ``per_row`` originals over their patched twins; for the attack, the
    original's target images over the images the learned token draws (same prompts and seeds)."""
    out = {}
    for role in GRID_ROLES:
        ids = [i for i, p in enumerate(result.prompts) if p.role == role]
        if ids:
            ids = _spread(ids, per_row)  # spread the picks over the concepts of the role
            out[role] = make_grid([result.original[i] for i in ids] + [result.patched[i] for i in ids], len(ids),
                                  scale)
    if result.attacks:
        k = max(1, per_row // len(result.attacks))
        top, bottom = [], []
        for a in result.attacks:
            ids = [i for i, p in enumerate(result.prompts) if p.role == "target" and p.concept == a["concept"]][:k]
            top += [result.original[i] for i in ids]
            bottom += a["images"][:len(ids)]
        out["attack"] = make_grid(top + bottom, len(top), scale)
    return out


def _spread(items: list, n: int) -> list:
    return items[::max(1, len(items) // n)][:n]


def to_dict(result: EvalResult, gates: GateReport, context: dict) -> dict:
    return {"passed": gates.passed, **context, "metrics": result.metrics, "absent": result.absent,
            "gates": gates.to_dict(), "per_concept": result.per_concept(), "seconds": result.seconds,
            "prompts": result.rows,
            "attacks": [{k: a.get(k) for k in ("concept", "success", "tries", "baseline", "memorization",
                                                 "loss_last", "seconds")}
                        for a in result.attacks]}


def markdown(result: EvalResult, gates: GateReport, context: dict, grid_files: dict[str, str]) -> str:
    verdict = "PASSED" if gates.passed else "FAILED"
    lines = [f"# Erasure evaluation: {verdict}", ""]
    for k in ("patch", "method", "concepts", "model", "family"):
        if context.get(k) is not None:
            v = context[k]
            lines.append(f"- **{k}**: {', '.join(v) if isinstance(v, list) else v}")
    lines += [f"- **gates**: `{gates.source}`", "", "## Gates", "", "| metric | value | bound | result | reason |",
              "|---|---:|---|---|---|"]
    for c in gates.checks:
        verdict = "pass" if c.passed else "**FAIL**"
        lines.append(f"| {c.metric} | {_fmt(c.value)} | {c.bound} | {verdict} | {c.reason} |")
    lines += ["", "## Metrics", "", "| metric | patched | original |", "|---|---:|---:|"]
    for k, v in result.metrics.items():
        if k.endswith("_original"):
            continue
        lines.append(f"| {k} | {_fmt(v)} | {_fmt(result.metrics.get(k + '_original'))} |")
    for k, why in result.absent.items():
        lines.append(f"\n`{k}` is absent: {why}.")
    lines += ["", "## Detection per concept", "", "| role | concept | images | original | patched |",
              "|---|---|---:|---:|---:|"]
    for r in result.per_concept():
        lines.append(f"| {r['role']} | {r['concept']} | {r['n']} | {_fmt(r['before'])} | {_fmt(r['after'])} |")
    if result.attacks:
        lines += ["", "## Concept-inversion attack (Pham et al. 2023)", "",
                  "| concept | attack success (best try) | tries | before inversion | memorization "
                  "| inversion loss | seconds |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        for a in result.attacks:
            tries = ", ".join(_fmt(t) for t in a.get("tries", []))
            lines.append(f"| {a['concept']} | {_fmt(a['success'])} | {tries} | {_fmt(a.get('baseline'))} | "
                         f"{_fmt(a['memorization'])} | "
                         f"{_fmt(a['loss_last'])} | {_fmt(a['seconds'])} |")
    if grid_files:
        lines += ["", "## Images (top row original, bottom row patched, same seeds)", ""]
        for role, name in grid_files.items():
            lines += [f"### {role}", "", f"![{role}]({name})", ""]
    s = result.seconds
    lines += ["", f"Generated {s.get('images_generated')} images; original model images "
                  f"{'from the cache' if s.get('original_cached') else 'generated'}."]
    return "\n".join(lines) + "\n"


def write_report(result: EvalResult, gates: GateReport, out_dir: str | Path, context: dict | None = None) -> Path:
    """Write the report folder atomically (staged beside it, then renamed into place)."""
    out_dir = Path(out_dir)
    context = context or {}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        names = {}
        for role, grid in grids(result).items():
            names[role] = f"grid-{role}.png"
            grid.save(stage / names[role])
        (stage / "report.json").write_text(json.dumps(to_dict(result, gates, context), indent=2))
        (stage / "report.md").write_text(markdown(result, gates, context, names))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        stage.rename(out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out_dir
