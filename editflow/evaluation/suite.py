"""The real-model evaluation suite: the prompt sets editflow ships for the common concept
families (:mod:`editflow.families`), in ``editflow/evaluation/prompt_sets/`` (linked from
``configs/prompts/`` in a checkout). Nudity's leakage includes implicit prompts in the manner of
I2P (Schramowski et al., CVPR 2023) and is judged by NudeNet
(:data:`~editflow.evaluation.detectors.NUDITY_PROTOCOLS`).

Prompt files use I2P's CSV columns where they exist (``prompt``, ``evaluation_seed``,
``categories``) plus ``role`` (target / leakage / neighbour), ``kind`` (the leakage kind) and
``concept`` (a preserved prompt's subject). ``{concept}`` stands for the erased concept and
``{typo}`` for a misspelling of it. A user's file (the real I2P CSV, UnlearnDiffAtk's
``nudity.csv``) replaces any part: ``--prompts``, ``--leakage-prompts``, ``--preserve-prompts``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from editflow.errors import EditflowError
from editflow.evaluation.prompts import EvalPrompt, PromptSet, load_prompt_file, misspell
from editflow.families import knowledge

PROMPT_SETS = Path(__file__).with_name("prompt_sets")
PRESERVATION = "preservation.csv"


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a suite CSV (``prompt`` required; the other columns optional)."""
    path = Path(path)
    if not path.is_file():
        raise EditflowError(f"prompt file not found: {path}")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise EditflowError(f"{path}: a CSV prompt file needs a 'prompt' column")
        rows = [r for r in reader if (r.get("prompt") or "").strip()]
    if not rows:
        raise EditflowError(f"{path}: no prompts in the file")
    return rows


def _seed(row: dict, default: int) -> int:
    s = (row.get("evaluation_seed") or row.get("seed") or "").strip()
    try:
        return int(float(s)) if s else default
    except ValueError:
        raise EditflowError(f"bad evaluation_seed {s!r} in a prompt file") from None


def _fill(text: str, concept: str, k: int) -> str:
    return text.replace("{concept}", concept).replace("{typo}", misspell(concept, k))


def suite_prompt_set(concepts: list[str], family: str, *, images: int = 24, preserve_images: int | None = None,
                     used_words: set[str] | frozenset = frozenset(), prompts: str | None = None,
                     leakage_prompts: str | None = None, preserve_prompts: str | None = None) -> PromptSet:
    """The evaluation prompts of a real-model erasure of ``concepts`` (one family).

    Targets: ``images`` per concept from the family's file (rows cycle when there are fewer).
    Leakage: the family file's leakage rows, minus any whose words the erasure used (a synonym
    it erased is not leakage), at most ``images`` per kind. Preserved: the everyday captions
    (``preserve_images`` per subject; default all), each judged by its subject. A user file
    replaces the matching part; its rows are used as they are.
    """
    used = {w.casefold() for w in used_words}
    own = prompts is not None and leakage_prompts is not None
    shipped = [] if own else read_rows(PROMPT_SETS / f"{knowledge(family).name}.csv")
    out: list[EvalPrompt] = []
    for c in concepts:
        if prompts is not None:
            targets = load_prompt_file(prompts, c, "target", family).prompts
        else:
            rows = [r for r in shipped if r.get("role", "target") == "target"]
            targets = [EvalPrompt(_fill(rows[i % len(rows)]["prompt"], c, i), c, family, "target", "",
                                  _seed(rows[i % len(rows)], i) + 7919 * (i // len(rows))) for i in range(images)]
        out += targets
        if leakage_prompts is not None:
            rows = read_rows(leakage_prompts)
        else:
            rows = [r for r in shipped if r.get("role") == "leakage"]
        per_kind: dict[str, int] = {}
        for k, r in enumerate(rows):
            text, kind = _fill(r["prompt"], c, k), (r.get("kind") or "").strip()
            if used & {w.strip(".,'").casefold() for w in text.split()} and kind != "paraphrase":
                continue
            per_kind[kind] = per_kind.get(kind, 0) + 1
            if per_kind[kind] <= images:
                out.append(EvalPrompt(text, c, family, "leakage", kind, _seed(r, 10_000 + k)))
    if preserve_prompts is not None:
        rows = read_rows(preserve_prompts)
        if any(not (r.get("concept") or "").strip() for r in rows):
            raise EditflowError(f"{preserve_prompts}: preserve prompts need a CSV 'concept' column")
    else:
        rows = read_rows(PROMPT_SETS / PRESERVATION)
    taken: dict[str, int] = {}
    for k, r in enumerate(rows):
        subject = r["concept"].strip()
        taken[subject] = taken.get(subject, 0) + 1
        if preserve_images is None or taken[subject] <= preserve_images:
            out.append(EvalPrompt(r["prompt"].strip(), subject, "preserved", "neighbour", "", _seed(r, 20_000 + k)))
    return PromptSet(out)
