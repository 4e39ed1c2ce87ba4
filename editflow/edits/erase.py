"""One erasure from plain, JSON-able inputs: what ``editflow erase`` and the flows both run.

:class:`EraseJob` names the concepts, the method, its options and the base model;
:func:`run_erase` builds the :class:`~editflow.edits.request.EraseRequest` (world-aware on the
embedded model: synonyms, anchors, training-style contexts, default preserve set), computes the
patch and returns it (the caller saves it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from editflow.edits.registry import get_method
from editflow.edits.request import ConceptSpec, EraseRequest
from editflow.errors import EditflowError


@dataclass
class EraseJob:
    concepts: list[str]
    method: str = "ace"
    model: str | None = None  # None: the embedded model
    anchor: str | None = None
    preserve: list[str] = field(default_factory=list)  # empty: the default set (embedded) / none
    aliases: list[str] = field(default_factory=list)
    synonyms: bool = True
    token_policy: str = "through_pad"
    options: dict = field(default_factory=dict)  # fields of the method's config (lam, guidance, ...)
    cache_dir: str | None = None  # preserve-statistics cache; None: no cache
    concept_aliases: dict[str, list[str]] = field(default_factory=dict)  # extra words per concept

    def validate(self) -> None:
        if not self.concepts:
            raise EditflowError("name at least one concept to erase")
        if self.aliases and len(self.concepts) != 1:
            raise EditflowError("--alias names one concept: give exactly one --concept with it")
        if self.model is None:
            from editflow.world import DEFAULT_WORLD

            for w in self.concepts:
                DEFAULT_WORLD.concept(w)  # unknown concept -> one-line error listing the known ones


def method_config(method: str, options: dict):
    """The method's config from ``options``, ignoring options that belong to other methods."""
    cls = get_method(method).config_class
    return cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})


def build_request(job: EraseJob) -> EraseRequest:
    if job.model is None:
        from editflow.world import DEFAULT_WORLD
        from editflow.world.erasure import world_request

        return world_request(DEFAULT_WORLD, list(job.concepts), job.anchor, list(job.preserve) or None,
                             job.synonyms, aliases=tuple(job.aliases), token_policy=job.token_policy,
                             concept_aliases={k: tuple(v) for k, v in job.concept_aliases.items()})
    return EraseRequest([ConceptSpec(w, tuple(job.aliases) + tuple(job.concept_aliases.get(w, ())), job.anchor or "")
                         for w in job.concepts], list(job.preserve), token_policy=job.token_policy)


def run_erase(job: EraseJob, pipe=None, progress=None, request: EraseRequest | None = None):
    """Compute the patch for ``job`` (loading its model unless ``pipe`` is given; building its
    request unless the caller built it already with :func:`build_request`)."""
    from editflow.edits.streaming import PreserveCache
    from editflow.models.pipeline import load_pipeline

    job.validate()
    config = method_config(job.method, job.options)
    pipe = pipe if pipe is not None else load_pipeline(job.model)
    request = request if request is not None else build_request(job)
    cache = PreserveCache(Path(job.cache_dir)) if job.cache_dir else None
    t0 = time.perf_counter()
    patch = get_method(job.method).compute(pipe, request, config, cache=cache, progress=progress)
    patch.metadata["seconds"] = round(time.perf_counter() - t0, 3)
    return patch, request


def prompt_count(request: EraseRequest) -> int:
    """Prompts an erasure encodes (for a progress bar)."""
    return len(request.templates) * (sum(len(c.words) for c in request.concepts) + len(request.preserve))
