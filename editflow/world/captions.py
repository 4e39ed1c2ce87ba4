"""Scenes of the embedded world and the captions that describe them.

A :class:`Scene` holds the labels (object, colour, style, identity, background) and the layout
of one image; :func:`sample_scene` draws one from a ``random.Random`` and :func:`caption` words
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

TEMPLATE_WORDS = frozenset(
    w
    for t in OBJECT_TEMPLATES + STYLE_TEMPLATES + IDENTITY_TEMPLATES
    for w in t.split()
    if not w.startswith("{")
) | {"an"}

P_IDENTITY = 0.16  # share of scenes showing a named character
P_STYLED = 0.55  # share of object scenes rendered in an artist's style
P_SYNONYM = 0.3  # share of mentions using a synonym or nickname
P_GENERIC = 0.08  # share of object mentions replaced by "shape"/"thing" (neutral anchor)
P_PLAIN_WORD = 0.2  # share of plain-style captions saying "plain"/"flat"


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

    def labels(self) -> dict[str, str]:
        return {"object": self.object, "colour": self.colour, "style": self.style, "identity": self.identity}

    def to_dict(self) -> dict:
        return asdict(self)


def sample_scene(rng: random.Random, spec: WorldSpec, *, identity: str | None = None,
                 object: str | None = None, colour: str | None = None,
                 style: str | None = None) -> Scene:
    """Draw a scene; any label given is fixed, the rest are random."""
    if identity is None:
        identity = (rng.choice([c.name for c in spec.identities if "null" not in c.tags])
                    if rng.random() < P_IDENTITY else "nobody")
    if identity != "nobody":
        look = spec.identity_looks[identity]
        object, colour, style = look.body, look.colour, "plain"
        scale = rng.uniform(0.30, 0.36)
    else:
        object = object or rng.choice([c.name for c in spec.objects])
        colour = colour or rng.choice([c.name for c in spec.colours])
        if style is None:
            styled = [c.name for c in spec.styles if "null" not in c.tags]
            style = rng.choice(styled) if rng.random() < P_STYLED else "plain"
        scale = rng.uniform(0.27, 0.40)
    margin = scale + 0.04
    return Scene(
        object=object,
        colour=colour,
        style=style,
        identity=identity,
        background=rng.choice(spec.backgrounds),
        cx=rng.uniform(margin, 1 - margin),
        cy=rng.uniform(margin + (0.06 if identity != "nobody" else 0), 1 - margin),
        scale=scale,
        angle=rng.uniform(-12, 12),
        shade=rng.random(),
        jitter=tuple(rng.uniform(-18, 18) for _ in range(3)),
        seed=rng.randrange(2**31),
    )


def _word(concept: Concept, rng: random.Random) -> str:
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
        text = template.format(identity=_word(spec.concept(scene.identity), rng),
                               background=scene.background)
        return fix_articles(text)
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


def mentions(text: str, spec: WorldSpec) -> dict[str, str]:
    """Which concept of each family a caption names (families it does not name are absent)."""
    found: dict[str, str] = {}
    for word in text.lower().split():
        try:
            c = spec.concept(word)
        except ValueError:
            continue
        found.setdefault(c.family, c.name)
    return found
