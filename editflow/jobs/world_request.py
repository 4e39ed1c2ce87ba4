"""Erase requests for concepts of the embedded world (:func:`world_request`): the world's knowledge
(:mod:`editflow.world.erasure`: synonyms, anchors, caption contexts, neighbours, described scenes,
kept prompts) put into an :class:`~editflow.edits.request.EraseRequest`."""

from __future__ import annotations

from editflow.edits.request import ConceptSpec, EraseRequest
from editflow.world.erasure import (
    FAMILY_ANCHORS,
    FAMILY_FINETUNE,
    concept_prompts,
    context_templates,
    default_preserve,
    described_scenes,
    implied_templates,
    kept_prompts,
    neighbours,
)
from editflow.world.spec import WorldSpec


def concept_spec(spec: WorldSpec, word: str, anchor: str | None = None, synonyms: bool = True,
                 aliases: tuple[str, ...] = ()) -> ConceptSpec:
    """``word``'s world concept with its synonyms (if asked) plus user ``aliases``."""
    c = spec.concept(word)
    if "null" in c.tags:
        raise ValueError(f"{word!r} is a family's neutral value, not an erasable concept")
    words = (c.synonyms if synonyms else ()) + tuple(a for a in aliases if a not in c.synonyms)
    anchor = FAMILY_ANCHORS[c.family] if anchor is None else anchor
    return ConceptSpec(c.name, words, anchor, implied_templates(spec, c.name) if anchor.strip() else ())


def world_request(spec: WorldSpec, words: list[str], anchor: str | None = None, preserve: list[str] | None = None,
                  synonyms: bool = True, n_templates: int = 32, seed: int = 0, aliases: tuple[str, ...] = (),
                  concept_aliases: dict[str, tuple[str, ...]] | None = None, **kw) -> EraseRequest:
    """An :class:`EraseRequest` for world concepts (same family required: they share contexts).

    ``aliases`` are extra words for the concept and need exactly one concept; ``concept_aliases``
    gives extra words per concept (a safety policy's synonyms).
    """
    if not words:
        raise ValueError("name at least one concept to erase")
    fams = {spec.concept(w).family for w in words}
    if len(fams) > 1:
        raise ValueError(f"erase concepts of one family at a time (got {sorted(fams)})")
    if aliases and len(words) != 1:
        raise ValueError("aliases name one concept: erase exactly one concept with them")
    templates = context_templates(spec, words[0], n_templates, seed)
    extra = concept_aliases or {}
    concepts = [concept_spec(spec, w, anchor, synonyms, tuple(aliases) + tuple(extra.get(w, ()))) for w in words]
    keep = default_preserve(spec, words) if preserve is None else preserve
    prompts = concept_prompts(spec, [c.name for c in concepts] + list(keep))
    near = {w: described_scenes(spec, w, seed=seed) for w in neighbours(spec, words) if w in keep}
    scenes = {c.name: described_scenes(spec, c.name, n_templates, seed) for c in concepts}
    return EraseRequest(concepts, keep, templates, prompts=prompts, neighbours=near, scenes=scenes,
                        finetune_defaults=dict(FAMILY_FINETUNE.get(fams.pop(), {})),
                        kept=kept_prompts(spec, words, keep, seed), **kw)
