"""What to erase and what to keep, and its expansion into prompts.

Prompt expansion (shared by every closed-form method): each concept is erased under its own word
and its aliases (synonyms, nicknames, user paraphrases), inside several context templates
(``"{}"`` marks the concept). Preserved concepts go through the same templates.
:mod:`editflow.edits.streaming` encodes the expansion into edit statistics.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

from editflow.edits.conditioning import TokenPolicy

DEFAULT_TEMPLATES = ("{}", "a {}", "a picture of a {}", "a drawing of a {}", "a photo of a {}")


@dataclass(frozen=True)
class ConceptSpec:
    """A concept to erase: its word, the other words that name it, and what it should become."""

    name: str
    aliases: tuple[str, ...] = ()
    anchor: str = ""
    # prompts that draw the concept without naming it (I2P's implicit prompts: "a person at the beach"
    # for nudity), written with "{}" where the anchor would make them safe: "a {} person at the beach";
    # the edit starts at the prompt's last word, where a causal encoder has read the whole context
    implied: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.name.strip():
            raise ValueError("a concept needs a non-empty name")
        for w in (self.name, *self.aliases, self.anchor, *self.implied):
            try:
                w.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"concept word {ascii(w)} is not valid UTF-8 text") from None
        object.__setattr__(self, "implied", tuple(self.implied))
        bad = [t for t in self.implied if t.count("{}") != 1 or not t.split("{}", 1)[1].split()]
        if bad:
            raise ValueError(f"an implied prompt needs one '{{}}' followed by words: {bad[:3]}")
        if self.implied and not self.anchor.strip():
            raise ValueError(f"implied prompts of {self.name!r} need an anchor (what makes them safe)")

    @property
    def words(self) -> tuple[str, ...]:
        return (self.name, *[a for a in self.aliases if a != self.name])


@dataclass
class EraseRequest:
    concepts: list[ConceptSpec]
    preserve: list[str] = field(default_factory=list)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    token_policy: TokenPolicy = TokenPolicy.through_pad
    # templates that draw one concept on its own, by word ("a shape by {}" for a style): the fine-tuning
    # draws its concept and preserved images from them; words without an entry use its defaults. Not part of
    # the closed form (nor of the fingerprint).
    prompts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # preserved words of the erased concepts' own kind, each with templates that show it in many scenes
    # ("a red blade by {}" for a style): the minmax fine-tuning draws ``neighbour_images`` of each from them.
    # Not part of the closed form (nor of the fingerprint).
    neighbours: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # erased concepts, each with templates that show it in described scenes covering how it looks (every
    # colour for a style): the minmax fine-tuning draws its references from them with ``scene_references``;
    # concepts without an entry use ``templates``. Not part of the closed form (nor of the fingerprint).
    scenes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # fine-tuning settings measured for this kind of concept on this model (FinetuneConfig fields; the
    # embedded world's, per family: editflow.world.erasure.FAMILY_FINETUNE); the job's own settings win
    finetune_defaults: dict = field(default_factory=dict)
    # whole prompts to keep as they are: every position joins the preserve set ("a person in red on the
    # street" for a nudity erasure, whose context templates suit no other word)
    kept: tuple[str, ...] = ()

    def __post_init__(self):
        self.token_policy = TokenPolicy(self.token_policy)
        twice = [n for n, k in Counter(" ".join(c.name.split()).casefold() for c in self.concepts).items() if k > 1]
        if twice:
            raise ValueError(f"concepts named more than once (case-insensitively): {twice[:3]}")
        self.kept = tuple(self.kept)
        if any(not isinstance(k, str) or not k.strip() for k in self.kept):
            raise ValueError("kept prompts must be non-empty text")
        self.prompts = {w: tuple(ts) for w, ts in self.prompts.items()}
        self.neighbours = {w: tuple(ts) for w, ts in self.neighbours.items()}
        self.scenes = {w: tuple(ts) for w, ts in self.scenes.items()}
        stray = sorted(set(self.neighbours) - set(self.preserve))
        if stray:
            raise ValueError(f"neighbours must be preserved words: {stray}")
        stray = sorted(set(self.scenes) - {c.name for c in self.concepts})
        if stray:
            raise ValueError(f"scenes must be erased concepts' names: {stray}")
        per_word = (*self.prompts.items(), *self.neighbours.items(), *self.scenes.items())
        bad = [t for t in (*self.templates, *(t for _, ts in per_word for t in ts)) if t.count("{}") != 1]
        bad += [w for w, ts in per_word if not ts]  # a word with no prompt
        if bad:
            raise ValueError(f"each template needs exactly one '{{}}' for the concept: {bad[:3]}")
        erased = {w.lower() for c in self.concepts for w in c.words}
        clash = sorted(erased & {p.lower() for p in self.preserve})
        if clash:
            raise ValueError(f"concepts both erased and preserved: {clash}")

    def fingerprint(self) -> str:
        blob = json.dumps({"concepts": [asdict(c) for c in self.concepts], "preserve": self.preserve,
                           "templates": list(self.templates), "policy": self.token_policy.value,
                           **({"kept": list(self.kept)} if self.kept else {})}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def erase_pairs(request: EraseRequest) -> list[tuple[str, str, str]]:
    """(prompt, target prompt, concept word) for every concept word in every template."""
    return [(t.format(w), t.format(c.anchor).strip() if c.anchor else t.format("").strip(), w)
            for c in request.concepts for w in c.words for t in request.templates]


def implied_pairs(request: EraseRequest) -> list[tuple[str, str, str]]:
    """(prompt, anchored prompt, last word) for every implied prompt of every concept.

    ``"a {} person at the beach"`` with anchor ``"clothed"`` gives ``("a person at the beach",
    "a clothed person at the beach", "beach")``: the edit maps the unnamed prompt's features from its
    last word on to the anchored prompt's features of the same words. No token of its own carries an
    implied concept, and a causal encoder knows the context only once it has read it: "a person at
    the" is still every person's prefix (editing it would change them all), "beach" is where the
    concept appears.
    """
    out = []
    for c in request.concepts:
        for t in c.implied:
            head, tail = t.split("{}", 1)
            out.append((" ".join((head + tail).split()), " ".join(t.format(c.anchor).split()), tail.split()[-1]))
    return out


def preserve_pairs(request: EraseRequest) -> list[tuple[str, str]]:
    """(prompt, concept word) for every preserved concept in every template."""
    return [(t.format(w), w) for w in request.preserve for t in request.templates]
