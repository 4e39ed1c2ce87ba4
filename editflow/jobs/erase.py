"""One erasure from plain, JSON-able inputs: what ``editflow erase`` and the flows both run.

:class:`EraseJob` names the concepts, the method, its options and the base model;
:func:`run_erase` builds the :class:`~editflow.edits.request.EraseRequest` (world-aware on the
embedded model: synonyms, anchors, training-style contexts, default preserve set), inverts the
concept's pictures into a token when given some (:mod:`editflow.inversion`), computes the patch,
runs the gradient stage when asked (:mod:`editflow.finetune`) and returns it (the caller saves it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import KW_ONLY, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from editflow.edits.registry import CLOSED_FORM, get_method
from editflow.edits.request import ConceptSpec, EraseRequest
from editflow.edits.streaming import PreserveCache
from editflow.errors import EditflowError
from editflow.families import guess_family, knowledge
from editflow.inversion import InversionConfig, invert, learned_tokens, load_images
from editflow.jobs.world_request import world_request
from editflow.models import diffusion as D
from editflow.models.device import Placement
from editflow.world import DEFAULT_WORLD
from editflow.world.erasure import concept_prompts

if TYPE_CHECKING:
    from editflow.finetune import FinetuneConfig


@dataclass
class EraseJob:
    concepts: list[str]
    method: str = "ace"
    _: KW_ONLY  # the rest by name: a job of 20 settings read positionally is a job misread
    model: str | None = None  # None: the embedded model
    anchor: str | None = None
    preserve: list[str] = field(default_factory=list)  # empty: the default set (embedded) / none
    aliases: list[str] = field(default_factory=list)
    synonyms: bool = True
    token_policy: str = "through_pad"
    options: dict = field(default_factory=dict)  # fields of the method's config (lam, guidance, ...)
    cache_dir: str | None = None  # preserve-statistics cache; None: no cache
    concept_aliases: dict[str, list[str]] = field(default_factory=dict)  # extra words per concept
    finetune: dict = field(default_factory=dict)  # fields of FinetuneConfig (mode, steps, ...); {}: mode auto
    images: str | None = None  # folder of images of the concept: inverted into a token that joins its words
    image_token: str | None = None  # name of that token (default <CONCEPT-images>)
    # where the model runs, as names (JSON-able), resolved where it is loaded (a Dask worker resolves its own);
    # None: $EDITFLOW_DEVICE / $EDITFLOW_DTYPE, else auto (editflow.models.device)
    device: str | None = None  # auto, cpu, cuda, cuda:N, mps
    dtype: str | None = None  # auto, float32, float16, bfloat16
    offload: bool = False  # diffusers model CPU offload (an accelerator device only)
    family: str | None = None  # real models: nudity, style, object, identity (editflow.families); None: guessed
    allow_download: bool = False  # a hub id not in the local cache may be fetched

    def validate(self) -> None:
        if not self.concepts:
            raise EditflowError("name at least one concept to erase")
        if self.aliases and len(self.concepts) != 1:
            raise EditflowError("--alias names one concept: give exactly one --concept with it")
        if self.finetune.get("mode", "auto") not in ("auto", "none") and get_method(self.method).kind != CLOSED_FORM:
            raise EditflowError(f"--finetune starts from a closed-form patch (ace, uce); {self.method} is "
                                "already trained by gradient")
        if self.images is not None and len(self.concepts) != 1:
            raise EditflowError("--images shows one concept: give exactly one --concept (or --token) with it")
        if self.model is None and not self.images_only:
            for w in self.concepts:
                DEFAULT_WORLD.concept(w)  # unknown concept -> one-line error listing the known ones
        if self.family is not None:
            if self.model is None:
                raise EditflowError("--family is for real models; the embedded world knows each concept's family")

            knowledge(self.family)  # unknown family -> one-line error listing the known ones


    @property
    def images_only(self) -> bool:
        """The concept is named by its images alone (its name is the learned token)."""
        return self.images is not None and self.concepts[0].startswith("<")

    def token_name(self) -> str:
        if self.images_only:
            return self.concepts[0]
        return self.image_token or f"<{self.concepts[0].strip().replace(' ', '_')}-images>"


def method_config(method: str, options: dict):
    """The method's config from ``options``, ignoring options that belong to other methods."""
    cls = get_method(method).config_class
    return cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})


def build_request(job: EraseJob) -> EraseRequest:
    if job.images_only:
        preserve, prompts = list(job.preserve), {}
        if job.model is None:
            preserve = preserve or [c.name for f in ("object", "style", "identity") for c in DEFAULT_WORLD.family(f)
                                    if "null" not in c.tags]
            prompts = concept_prompts(DEFAULT_WORLD, preserve)
        return EraseRequest([ConceptSpec(job.concepts[0], tuple(job.aliases), job.anchor or "")], preserve,
                            token_policy=job.token_policy, prompts=prompts)
    if job.images is not None:  # the images' token joins the concept's words
        job = replace(job, concept_aliases={**job.concept_aliases,
                                            job.concepts[0]: [*job.concept_aliases.get(job.concepts[0], []),
                                                              job.token_name()]})
    if job.model is None:
        return world_request(DEFAULT_WORLD, list(job.concepts), job.anchor, list(job.preserve) or None,
                             job.synonyms, aliases=tuple(job.aliases), token_policy=job.token_policy,
                             concept_aliases={k: tuple(v) for k, v in job.concept_aliases.items()})

    families = dict.fromkeys(job.family or guess_family(w) for w in job.concepts)
    kept = tuple(p for f in families for p in knowledge(f).kept)
    return EraseRequest([_real_concept(job, w) for w in job.concepts], list(job.preserve),
                        token_policy=job.token_policy, kept=kept)


def _real_concept(job: EraseJob, word: str) -> ConceptSpec:
    """``word`` on a real model: its family's anchor (unless the job names one), with ``synonyms``
    the family's words (nudity's nude, naked, ...), then the job's own aliases, and the family's
    implied prompts when there is an anchor to put in them."""

    fam = knowledge(job.family or guess_family(word))
    own = [*job.aliases, *job.concept_aliases.get(word, [])]
    words = [w for w in (fam.aliases if job.synonyms else ()) if w.casefold() != word.casefold()] + own
    anchor = fam.anchor if job.anchor is None else job.anchor
    return ConceptSpec(word, tuple(dict.fromkeys(words)), anchor, fam.implied if anchor.strip() else ())


def finetune_config(job: EraseJob, request: EraseRequest, pipe=None) -> FinetuneConfig:
    """The job's :class:`~editflow.finetune.FinetuneConfig`, ``auto`` decided for its request
    (:func:`~editflow.finetune.resolve_mode`) and where ``pipe`` runs; a minmax one starts from the
    request's ``finetune_defaults`` (settings measured for its kind of concept), the job's own settings
    winning.

    ``auto`` runs the implied stage on the embedded model, and on a real checkpoint only on an
    accelerator: there it draws some forty pictures and trains a LoRA (about a minute on a GPU), on a
    CPU it would take hours, so it is left out with a warning (``--finetune implied`` asks for it).
    SDXL-style UNets have no gradient stage.
    """
    from editflow.finetune import FinetuneConfig, FinetuneMode, resolve_mode

    closed_form = get_method(job.method).kind == CLOSED_FORM
    asked = FinetuneConfig(**job.finetune)
    ft = resolve_mode(asked, request, closed_form, affordable=_stage_affordable(job, pipe))
    if ft.mode is not resolve_mode(asked, request, closed_form).mode:  # auto would, were it affordable here
        logging.getLogger(__name__).warning(
            "the implied stage (prompts that imply the concept without naming it) is left out: on a real "
            "checkpoint it runs on an accelerator, with an SD 1.x/2.x UNet; --finetune implied asks for it")
    if ft.mode is FinetuneMode.minmax and request.finetune_defaults:
        ft = FinetuneConfig(**{**request.finetune_defaults, **job.finetune})
    return ft


def _stage_affordable(job: EraseJob, pipe) -> bool:
    """Whether ``auto`` may add a gradient stage: always on the embedded model; on a real checkpoint
    when it is loaded on an accelerator with a UNet the stage can train (SD 1.x/2.x)."""
    if job.model is None:
        return True
    if pipe is None:
        return False

    return D.execution_device(pipe).type != "cpu" and D.is_trainable(pipe)


def run_erase(job: EraseJob, pipe=None, progress=None, request: EraseRequest | None = None,
              finetune_progress=None):
    """Compute the patch for ``job`` (loading its model unless ``pipe`` is given; building its
    request unless the caller built it already with :func:`build_request`).

    With ``job.images`` the concept's images are first inverted into a token
    (:mod:`editflow.inversion`) that joins its words; with ``job.finetune`` the closed-form patch
    then goes through the gradient stage (:mod:`editflow.finetune`), whose ``finetune_progress``
    gets ``(event, info)``.
    """
    from editflow.finetune import FinetuneMode, finetune
    from editflow.models.pipeline import load_pipeline

    job.validate()
    config = method_config(job.method, job.options)
    request = request if request is not None else build_request(job)
    if pipe is None:
        place = Placement.resolve(job.device, job.dtype)
        pipe = load_pipeline(job.model, device=place.device, dtype=place.dtype, offload=job.offload,
                             allow_download=job.allow_download)
    ft = finetune_config(job, request, pipe)
    if ft.mode in (FinetuneMode.minmax, FinetuneMode.implied) and getattr(config, "gated", False):
        config = replace(config, gated=False)  # a LoRA trains over the ungated closed form (finetune.minmax)
    cache = PreserveCache(Path(job.cache_dir)) if job.cache_dir else None
    method = get_method(job.method)
    t0 = time.perf_counter()
    tokens, shown = [], {}
    if job.images is not None:
        images = load_images(job.images)
        tok = invert(pipe, images, job.token_name(), InversionConfig(seed=ft.seed))
        tok.metadata["concept"] = request.concepts[0].name
        tokens, shown = [tok], {request.concepts[0].name: images}
    with learned_tokens(pipe, *tokens):
        patch = method.compute(pipe, request, config, cache=cache, progress=progress)
    patch = finetune(pipe, request, patch, lambda req: method.compute(pipe, req, config, cache=cache), ft,
                     images=shown, tokens=tokens, progress=finetune_progress)
    if tokens:
        patch.metadata["learned_tokens"] = [{"token": t.token, "images": t.metadata["images"],
                                             "loss_last": t.metadata["loss_last"]} for t in tokens]
        patch.tokens = tokens
    patch.metadata["seconds"] = round(time.perf_counter() - t0, 3)
    return patch, request


def prompt_count(request: EraseRequest) -> int:
    """Prompts an erasure encodes (for a progress bar)."""
    return (len(request.templates) * (sum(len(c.words) for c in request.concepts) + len(request.preserve))
            + sum(len(c.implied) for c in request.concepts) + len(request.kept))
