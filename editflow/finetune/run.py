"""The gradient stage after a closed-form erasure: adversarial rounds, then FMN steps.

``adv``: for ``rounds`` rounds, search an adversarial embedding against the current patch
(:mod:`editflow.finetune.adversarial`), add it to its concept's words and solve the closed form
again (the new embedding's features join the erase set and the gate's calibration). Then, in
``fmn`` and ``adv`` modes, ``steps`` gradient steps of the Forget-Me-Not losses on the patch's
factors (:mod:`editflow.finetune.fmn`), over the concept's prompts and the adversarial ones.

``minmax``: a LoRA over the (ungated) closed form trained against a persistent concept-inversion
attacker (:mod:`editflow.finetune.minmax`), on the concept's images (drawn from the request's own
prompts for it, or with ``scene_references`` from its described scenes, else its scene templates) and
preserved concepts' ones (the request's neighbours, with ``neighbour_images``, drawn in their scenes).

``implied``: a LoRA over the (ungated) closed form trained so the request's implied prompts ("a
person at the beach") predict what their anchored prompts do (:mod:`editflow.finetune.implied`), on
the base model's drawings of the anchored prompts, the request's kept prompts (else its preserved
concepts' prompts) keeping theirs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace

from PIL import Image

from editflow.edits.patch import Patch
from editflow.edits.request import ConceptSpec, EraseRequest, erase_pairs, implied_pairs, preserve_pairs
from editflow.finetune.adversarial import adversarial_embedding
from editflow.finetune.config import DEFAULT_KEEP_TEMPLATES, FinetuneConfig, FinetuneMode
from editflow.finetune.fmn import fmn_finetune
from editflow.finetune.implied import check_implied, implied_finetune
from editflow.finetune.minmax import minmax_finetune
from editflow.inversion import InversionConfig, LearnedTokens, learned_tokens
from editflow.models.pipeline import generate


def reference_images(pipe, concept: ConceptSpec, templates: tuple[str, ...], n: int, seed: int = 0
                     ) -> list[Image.Image]:
    """``n`` images of ``concept`` drawn by the base model from its erase prompts (seeded)."""
    prompts = [templates[i % len(templates)].format(concept.name) for i in range(n)]
    return generate(pipe, prompts, [seed * 100_003 + 50_000 + i for i in range(n)])


def keep_prompts(words: list[str], templates: tuple[str, ...] | dict[str, tuple[str, ...]], per_concept: int
                 ) -> list[str]:
    """``per_concept`` prompts for each word, the templates (one tuple for all, or one per word) taken in
    turn across words (so few prompts per word still see them all)."""
    for_word = templates if isinstance(templates, dict) else dict.fromkeys(words, templates)
    return [for_word[w][(j * per_concept + i) % len(for_word[w])].format(w)
            for j, w in enumerate(words) for i in range(per_concept)]


def preserve_images(pipe, prompts: list[str], seed: int = 0) -> list[tuple[str, Image.Image]]:
    """(prompt, image) pairs: the base model's drawing of each prompt (seeded)."""
    if not prompts:
        return []
    return list(zip(prompts, generate(pipe, prompts, [seed * 100_003 + 70_000 + i for i in range(len(prompts))])))


def implied_images(pipe, request: EraseRequest, config: FinetuneConfig) -> list[tuple[str, str, Image.Image]]:
    """(implied prompt, anchored prompt, picture): ``implied_images`` drawings of each anchored prompt
    by the base model (seeded)."""
    pairs = [(p, a) for p, a, _ in implied_pairs(request) for _ in range(config.implied_images)]
    if not pairs:
        return []
    seeds = [config.seed * 100_003 + 90_000 + i for i in range(len(pairs))]
    return [(p, a, img) for (p, a), img in zip(pairs, generate(pipe, [a for _, a in pairs], seeds))]


def minmax_keep_prompts(request: EraseRequest, config: FinetuneConfig) -> list[str]:
    """The prompts of minmax's preserved images: ``keep_images`` of every preserved word from
    ``keep_templates`` or the request's own prompts for it, then, when ``neighbour_images`` > 0,
    that many of each of the request's neighbours from its scene templates instead."""
    near = [w for w in request.preserve if w in request.neighbours] if config.neighbour_images else []
    rest = [w for w in request.preserve if w not in near]
    templates = ({w: request.prompts.get(w, DEFAULT_KEEP_TEMPLATES) for w in rest}
                 if config.keep_templates is None else config.keep_templates)
    return (keep_prompts(rest, templates, config.keep_images)
            + keep_prompts(near, request.neighbours, config.neighbour_images))


def _with_references(pipe, request: EraseRequest, images: dict[str, list[Image.Image]] | None,
                     templates: tuple[str, ...], config: FinetuneConfig,
                     own: dict[str, tuple[str, ...]] | None = None) -> dict[str, list[Image.Image]]:
    """``images`` with the base model's drawings (:func:`reference_images`) for concepts it lacks,
    from the concept's ``own`` templates where it has them (the request's prompts or scenes for it),
    else from ``templates``."""
    out = dict(images or {})
    for c in request.concepts:
        if c.name not in out:
            out[c.name] = reference_images(pipe, c, (own or {}).get(c.name, templates), config.references,
                                           config.seed)
    return out


def with_tokens(request: EraseRequest, tokens: list[LearnedTokens]) -> EraseRequest:
    """``request`` with each learned token added to the words of the concept it was learned for."""
    extra: dict[str, tuple[str, ...]] = {}
    for t in tokens:
        extra.setdefault(t.metadata["concept"], ())
        extra[t.metadata["concept"]] += (t.token,)
    concepts = [replace(c, aliases=c.aliases + extra.get(c.name, ())) for c in request.concepts]
    return replace(request, concepts=concepts)


def resolve_mode(config: FinetuneConfig, request: EraseRequest, closed_form: bool = True,
                 affordable: bool = True) -> FinetuneConfig:
    """``config`` with ``auto`` decided: ``implied`` when the request has implied prompts, the patch is a
    closed form to start from and the stage is ``affordable`` where the model runs, else ``none``; any
    other mode as it is."""
    if config.mode is not FinetuneMode.auto:
        return config
    mode = FinetuneMode.implied if closed_form and affordable and implied_pairs(request) else FinetuneMode.none
    return replace(config, mode=mode)


def finetune(pipe, request: EraseRequest, patch: Patch, compute: Callable[[EraseRequest], Patch],
             config: FinetuneConfig, images: dict[str, list[Image.Image]] | None = None,
             tokens: list[LearnedTokens] | None = None, progress=None) -> Patch:
    """The fine-tuned patch. ``compute(request)`` solves the closed form again (same method and
    settings); ``images`` per concept name default to the base model's own drawings; ``tokens``
    are learned tokens the request already names (``erase --images``): loaded while encoding.

    ``progress(event: str, info: dict)`` reports each round and step.
    """
    config = resolve_mode(config, request)
    if config.mode is FinetuneMode.none:
        return patch
    report = progress or (lambda event, info: None)
    t0 = time.perf_counter()
    given = list(tokens or [])
    adv: list[LearnedTokens] = []
    if config.mode is FinetuneMode.minmax:
        # the attack's own plain templates ("a photo of a {}"), not the request's scene contexts: the
        # attacker and the defender play on the prompts the evaluation's attacker uses
        plain = InversionConfig().templates
        with learned_tokens(pipe, *given):
            if config.scene_references:  # the concept in the request's scenes ("a blue heart by {}")
                images = _with_references(pipe, request, images, request.templates, config, request.scenes)
            else:  # the request's own prompts for it ("a shape by {}")
                images = _with_references(pipe, request, images, plain, config, request.prompts)
            keep = preserve_images(pipe, minmax_keep_prompts(request, config), config.seed)
            contexts = {c.name: request.templates + request.scenes.get(c.name, ()) for c in request.concepts}
            patch, facts = minmax_finetune(pipe, patch, list(request.concepts), images, keep, plain, config,
                                           progress=lambda n, h: report("step", h), contexts=contexts)
        return _with_metadata(patch, config, adv, facts, t0)
    if config.mode is FinetuneMode.implied:
        check_implied(pipe, patch, len(implied_pairs(request)))  # before any drawing
        with learned_tokens(pipe, *given):
            pairs = implied_images(pipe, request, config)
            kept = list(request.kept) or minmax_keep_prompts(request, config)
            patch, facts = implied_finetune(pipe, patch, pairs, preserve_images(pipe, kept, config.seed), config,
                                            progress=lambda n, h: report("step", h))
        return _with_metadata(patch, config, adv, facts, t0)
    if config.mode is FinetuneMode.adv and config.rounds:
        images = _with_references(pipe, request, images, request.templates, config)
        for r in range(config.rounds):
            concept = request.concepts[r % len(request.concepts)]
            with learned_tokens(pipe, *given):
                tok = adversarial_embedding(pipe, patch, images[concept.name], concept, r // len(request.concepts),
                                            config)
            adv.append(tok)
            with learned_tokens(pipe, *given, *adv):
                patch = compute(with_tokens(request, adv))
            report("round", {"round": r + 1, "of": config.rounds, "search": tok.metadata["search"],
                             "loss": round(tok.metadata["loss_last"], 4), "rank": patch.edit.rank})
    facts: dict = {}
    if config.steps:
        full = with_tokens(request, adv)
        erase = [(p, w) for p, _, w in erase_pairs(full)]
        keep = [p for p, _ in preserve_pairs(full)]
        with learned_tokens(pipe, *given, *adv):
            patch, facts = fmn_finetune(pipe, patch, erase, keep, config, request.token_policy,
                                        progress=lambda n, h: report("step", h))
    return _with_metadata(patch, config, adv, facts, t0)


def _with_metadata(patch: Patch, config: FinetuneConfig, adv: list[LearnedTokens], facts: dict, t0: float) -> Patch:
    patch.metadata = {**patch.metadata, "rank": patch.edit.rank,
                      "finetune": {"config": {k: (v.value if hasattr(v, "value") else v)
                                              for k, v in asdict(config).items()},
                                   "adversarial": [{"token": t.token, **{k: t.metadata[k] for k in
                                                                         ("search", "concept", "round", "loss_last")}}
                                                   for t in adv],
                                   "losses": facts, "seconds": round(time.perf_counter() - t0, 2)}}
    return patch
