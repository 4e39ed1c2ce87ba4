"""Scenes of the embedded world and the captions that describe them.

A :class:`Scene` holds the labels (object, colour, style, identity, attire, background) and the
layout of one image; :func:`sample_scene` draws one from a ``random.Random`` and :func:`caption` words
it with one of several templates, using synonyms and nicknames part of the time.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from editflow.world.spec import GENERIC_OBJECT_WORDS, Concept, WorldSpec

OBJECT_TEMPLATES = (
    "a {colour} {object}",
    "a {object}",
    "a picture of a {colour} {object}",
    "a drawing of a {colour} {object}",
    "a {colour} {object} on a {background} background",
    "{colour} {object}",
)
STYLE_TEMPLATES = (
    "a {colour} {object} by {artist}",
    "a {colour} {object} in the style of {artist}",
    "a {object} by {artist}",
    "a drawing of a {colour} {object} by {artist}",
    "a {colour} {object} on a {background} background by {artist}",
)
IDENTITY_TEMPLATES = (
    "{identity}",
    "a picture of {identity}",
    "a portrait of {identity}",
    "{identity} on a {background} background",
)

# People: the attire is named ("a naked woman on the street") or left to the place ("a person at
# the beach"); a colour is the garment's, so only clothed people are described by one.
NAMED_ATTIRE_TEMPLATES = (
    "a {attire} {person}",
    "a {attire} {person} {place}",
    "a picture of a {attire} {person}",
    "a picture of a {attire} {person} {place}",
)
CLOTHED_TEMPLATES = ("a {person} in {colour}", "a {person} in {colour} {place}", "a {attire} {person} in {colour}")
IMPLICIT_TEMPLATES = ("a {person} {place}", "a picture of a {person} {place}")  # the place always said

TEMPLATE_WORDS = frozenset(
    w
    for t in (OBJECT_TEMPLATES + STYLE_TEMPLATES + IDENTITY_TEMPLATES + NAMED_ATTIRE_TEMPLATES
              + CLOTHED_TEMPLATES + IMPLICIT_TEMPLATES)
    for w in t.split()
    if not w.startswith("{")
) | {"an"}

P_IDENTITY = 0.16  # share of scenes showing a named character
P_STYLED = 0.55  # share of object scenes rendered in an artist's style
P_SYNONYM = 0.3  # share of mentions using a synonym or nickname
P_GENERIC = 0.08  # share of object mentions replaced by "shape"/"thing" (neutral anchor)
P_PLAIN_WORD = 0.2  # share of plain-style captions saying "plain"/"flat"
P_PERSON = 0.3  # share of non-character scenes showing a person
P_NAKED_CHARACTER = 0.25  # share of character scenes drawn naked (always said in the caption)
P_CLOTHED_WORD = 0.15  # share of clothed-character captions saying so
P_ATTIRE_WORD = 0.5  # share of person captions naming the attire (the rest: the place implies it)
P_TYPO = 0.05  # share of attire mentions misspelled (when the concept has known misspellings)


@dataclass(frozen=True)
class Scene:
    """Labels and layout of one rendered image. ``identity == "nobody"`` for object scenes."""

    object: str
    colour: str
    style: str
    identity: str
    background: str
    cx: float  # centre, fraction of the canvas
    cy: float
    scale: float  # half-size, fraction of the canvas
    angle: float  # degrees
    shade: float  # background brightness in [0, 1]
    jitter: tuple[float, float, float]  # per-channel colour jitter
    seed: int  # for textures (grain)
    attire: str = "nofigure"  # "clothed"/"naked" for people and characters

    def labels(self) -> dict[str, str]:
        return {"object": self.object, "colour": self.colour, "style": self.style, "identity": self.identity,
                "nudity": self.attire}

    def shows(self, family: str) -> bool:
        """Whether the image shows this family's label (a naked figure wears no colour)."""
        return not (family == "colour" and self.attire == "naked")

    def to_dict(self) -> dict:
        return asdict(self)


def sample_scene(rng: random.Random, spec: WorldSpec, *, identity: str | None = None,
                 object: str | None = None, colour: str | None = None,
                 style: str | None = None, attire: str | None = None,
                 background: str | None = None) -> Scene:
    """Draw a scene; any label given is fixed, the rest are random.

    ``attire`` "clothed"/"naked" asks for a figure (a person unless ``identity`` names a
    character), "nofigure" for an object scene.
    """
    figures = [c.name for c in spec.objects if "figure" in c.tags]
    if identity is None:
        identity = ("nobody" if attire == "nofigure" or object is not None or style not in (None, "plain")
                    or rng.random() >= P_IDENTITY
                    else rng.choice([c.name for c in spec.identities if "null" not in c.tags]))
    person = False
    if identity != "nobody":
        look = spec.identity_looks[identity]
        object, colour, style = look.body, look.colour, "plain"
        attire = attire or ("naked" if rng.random() < P_NAKED_CHARACTER else "clothed")
        scale = rng.uniform(0.30, 0.36)
        background = background or rng.choice(spec.backgrounds)
    else:
        person = object in figures or (object is None and style in (None, "plain") and attire != "nofigure"
                                       and (attire is not None or rng.random() < P_PERSON))
        if person:
            object = object or rng.choice(figures)
            style = "plain"
            background = background or rng.choice(list(spec.places))
            if attire is None:
                attire = "naked" if rng.random() < spec.places[background][1] and colour is None else "clothed"
            scale = rng.uniform(0.34, 0.42)
        else:
            object = object or rng.choice([c.name for c in spec.objects if "figure" not in c.tags])
            if style is None:
                styled = [c.name for c in spec.styles if "null" not in c.tags]
                style = rng.choice(styled) if rng.random() < P_STYLED else "plain"
            attire = "nofigure"
            scale = rng.uniform(0.27, 0.40)
            background = background or rng.choice(spec.backgrounds)
        colour = colour or rng.choice([c.name for c in spec.colours])
    margin = scale + 0.04
    return Scene(
        object=object,
        colour=colour,
        style=style,
        identity=identity,
        background=background,
        cx=rng.uniform(margin, 1 - margin) if not person else rng.uniform(0.42, 0.58),
        cy=rng.uniform(margin + (0.06 if identity != "nobody" else 0), 1 - margin) if not person
        else rng.uniform(0.47, 0.53),
        scale=scale,
        angle=rng.uniform(-12, 12) if not person else rng.uniform(-5, 5),
        shade=rng.random(),
        jitter=tuple(rng.uniform(-18, 18) for _ in range(3)),
        seed=rng.randrange(2**31),
        attire=attire,
    )


def _word(concept: Concept, rng: random.Random) -> str:
    if concept.misspellings and rng.random() < P_TYPO:
        return rng.choice(concept.misspellings)
    if concept.synonyms and rng.random() < P_SYNONYM:
        return rng.choice(concept.synonyms)
    return concept.name


def fix_articles(text: str) -> str:
    """``a`` -> ``an`` before a vowel, as a person would write it."""
    words = text.split()
    for i, w in enumerate(words[:-1]):
        if w == "a" and words[i + 1][0] in "aeiou":
            words[i] = "an"
    return " ".join(words)


def caption(scene: Scene, rng: random.Random, spec: WorldSpec) -> str:
    """Describe ``scene`` with a random template and random (synonym) wording."""
    if scene.identity != "nobody":
        template = rng.choice(IDENTITY_TEMPLATES)
        name = _word(spec.concept(scene.identity), rng)
        if scene.attire == "naked" or rng.random() < P_CLOTHED_WORD:
            name = f"{name} {_word(spec.concept(scene.attire), rng)}"
        return fix_articles(template.format(identity=name, background=scene.background))
    if scene.attire in ("naked", "clothed"):
        return _person_caption(scene, rng, spec)
    styled = scene.style != "plain"
    template = rng.choice(STYLE_TEMPLATES if styled else OBJECT_TEMPLATES)
    obj = (rng.choice(GENERIC_OBJECT_WORDS) if rng.random() < P_GENERIC
           else _word(spec.concept(scene.object), rng))
    colour = _word(spec.concept(scene.colour), rng)
    if not styled and rng.random() < P_PLAIN_WORD:
        colour = f"{rng.choice(('plain', 'flat'))} {colour}"
    text = template.format(
        colour=colour,
        object=obj,
        artist=_word(spec.concept(scene.style), rng) if styled else "",
        background=scene.background,
    )
    return fix_articles(text)


def _person_caption(scene: Scene, rng: random.Random, spec: WorldSpec) -> str:
    named = rng.random() < P_ATTIRE_WORD
    if scene.attire == "clothed" and rng.random() < 0.5:
        template = rng.choice(CLOTHED_TEMPLATES if named else CLOTHED_TEMPLATES[:2])
    else:
        template = rng.choice(NAMED_ATTIRE_TEMPLATES if named else IMPLICIT_TEMPLATES)
    text = template.format(attire=_word(spec.concept(scene.attire), rng),
                           person=_word(spec.concept(scene.object), rng),
                           colour=_word(spec.concept(scene.colour), rng),
                           place=spec.places[scene.background][0])
    return fix_articles(text)


def mentions(text: str, spec: WorldSpec) -> dict[str, str]:
    """Which concept of each family a caption names (families it does not name are absent);
    known misspellings count as the word they misspell."""
    found: dict[str, str] = {}
    for word in text.lower().split():
        c = spec.named(word)
        if c is not None:
            found.setdefault(c.family, c.name)
    return found
