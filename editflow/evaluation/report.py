"""Gate reports on disk: ``report.json`` (machine-readable), ``report.md`` (for a reviewer) and
before/after grids (original row over patched row, same seeds), written atomically as one folder.

A report folder is replaced safely (:func:`write_folder`): the new one is written into a hidden
stage beside it (``.<name>.rep-<pid>-*``), the old one is renamed aside (``.<name>.old-<pid>-*``),
the stage is renamed in, and only then is the old one deleted. A writer killed at any point
leaves either the old or the new folder in place, plus hidden leftovers that the next write
(or :func:`recover_folder`) cleans up: a folder renamed aside whose replacement never arrived is
put back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from editflow.evaluation.gates import GateReport

if TYPE_CHECKING:
    from editflow.evaluation.evaluate import EvalResult

STAGE, ASIDE = ".rep-", ".old-"
STALE_SECONDS = 3600  # a leftover this old is stale even if its pid is alive again (reused)

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
    from editflow.models.pipeline import make_grid

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


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes: ``report.json`` records the evaluated patch's, binding the two."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _leftovers(out_dir: Path, kind: str) -> list[Path]:
    prefix = f".{out_dir.name}{kind}"
    if not out_dir.parent.is_dir():
        return []
    return [p for p in out_dir.parent.iterdir() if p.name.startswith(prefix)]


def _stale(path: Path, kind: str) -> bool:
    """Left by a writer that is gone: its pid (in the name) is dead, or it was made (a stage) or put
    aside (an old folder) over an hour ago, longer than any writer holds one (a reused pid)."""
    try:
        if time.time() - path.lstat().st_mtime > STALE_SECONDS:
            return True
        pid = int(path.name.split(kind, 1)[1].split("-", 1)[0])
    except (OSError, ValueError, IndexError):
        return True
    if os.name != "posix":
        return False  # no cheap liveness check: wait for the age limit
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. EPERM: alive, someone else's
        return False
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover_folder(out_dir: str | Path) -> None:
    """Clean up after writers of ``out_dir`` that were killed: delete their unfinished stages, put
    a folder they renamed aside back when ``out_dir`` is missing, delete the other asides.
    Leftovers of live writers (another process replacing the folder now) are left alone."""
    out_dir = Path(out_dir)
    for stage in _leftovers(out_dir, STAGE):
        if _stale(stage, STAGE):
            _remove(stage)
    asides = sorted((p for p in _leftovers(out_dir, ASIDE) if _stale(p, ASIDE)), key=lambda p: p.lstat().st_mtime)
    if asides and not os.path.lexists(out_dir):
        os.rename(asides.pop(), out_dir)  # killed between "old aside" and "new in": the old one is back
    for aside in asides:
        _remove(aside)


def write_folder(out_dir: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create or replace the folder ``out_dir`` with what ``fill(stage)`` writes into a fresh folder,
    so that ``out_dir`` is always either the complete old folder or the complete new one."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(out_dir)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{STAGE}{os.getpid()}-", dir=out_dir.parent))
    try:
        fill(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    aside = None
    if os.path.lexists(out_dir):
        aside = out_dir.parent / f".{out_dir.name}{ASIDE}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(out_dir, aside)
        os.utime(aside)  # its age now tells when it was put aside (staleness), not when it was written
    try:
        os.rename(stage, out_dir)
    except BaseException:
        if aside is not None and not os.path.lexists(out_dir):
            os.rename(aside, out_dir)  # put the old folder back
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if aside is not None:
        _remove(aside)
    return out_dir


def write_report(result: EvalResult, gates: GateReport, out_dir: str | Path, context: dict | None = None) -> Path:
    """Write the report folder atomically (:func:`write_folder`: staged beside it, then swapped in)."""
    context = context or {}

    def fill(stage: Path) -> None:
        names = {}
        for role, grid in grids(result).items():
            names[role] = f"grid-{role}.png"
            grid.save(stage / names[role])
        (stage / "report.json").write_text(json.dumps(to_dict(result, gates, context), indent=2))
        (stage / "report.md").write_text(markdown(result, gates, context, names))

    return write_folder(out_dir, fill)
