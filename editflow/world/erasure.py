"""What the embedded world knows about erasing its concepts: anchors, contexts, neighbours, scenes.

The world knows each concept's synonyms, its family's neutral word ("shape" stands in for an
object in ~8 % of training captions) and the caption templates the model was trained on, so a
request built from these (:mod:`editflow.jobs.world_request`) covers the ways the model has
learned to name the concept.
"""

from __future__ import annotations

import random

from editflow.world.captions import caption, fix_articles, sample_scene
from editflow.world.spec import WorldSpec

FAMILY_ANCHORS = {"object": "shape", "colour": "", "style": "", "identity": "", "nudity": "clothed"}

# Minmax fine-tuning settings per family, where the defaults (FinetuneConfig) fall short; a job's own
# settings win. A style is a texture any object can wear: trained on 16 drawings of "a shape by
# kasimir", the defender left holes that a fresh 400-step attack on the evaluation's pictures ("a red
# heart by kasimir") found in about half the images, and pushing harder (η 2) cost the other styles up
# to half their pictures (2 preserved images each). η 3; 32 references drawn in the style's described
# scenes, every colour in turn; half the word term's prompts from the request's contexts ("a blue ball
# in the style of kasimir", which leaked with the plain ones only); 5 attackers; 16 images of each other
# style, each in its own described scene (with 8, five attackers cost odalys a quarter of its pictures).
# Over three training seeds: attack 0.04 / 0.17 / 0.04, erasure 0, specificity 0.991 / 1.000 / 1.000, the goal met
# (docs/experiments/2026-11-23-finetune-rounds.md, tenth round; the ninth round's settings: median attack 0.33,
# specificity 0.964).
FAMILY_FINETUNE = {"style": {"eta": 3.0, "neighbour_images": 16, "references": 32, "scene_references": True,
                             "scene_words": 0.5, "attackers": 5}}
NEIGHBOUR_SCENES = 16  # described scenes per neighbour (the fine-tuning's neighbour images take them in turn)

# How to draw one concept of each family on its own. Measured on the 2026-11-22 embedded model (8 seeds
# each, the evaluator's zero-shot label): "a {}" drew a style word plain (0/8 for "a kasimir", "a odalys")
# and "a photo of a {}" an identity as nobody (0/8 for zorbo), while these drew the concept 7-8/8.
FAMILY_PROMPTS = {"object": ("a {}", "{}"), "colour": ("a {} shape", "{}"), "style": ("a shape by {}", "{}"),
                  "identity": ("a picture of {}", "{}"), "nudity": ("a {} person", "{}")}
# The people words an erasure's implied prompts use; the evaluation's implicit prompts use the others
# (woman, man, human), so implicit leakage is measured on prompts the erasure never saw.
IMPLIED_PEOPLE = ("person", "figure")


def implying_places(spec: WorldSpec, word: str) -> list[str]:
    """The place phrases at which people are drawn as ``word`` though no caption says so: mostly-naked
    places for the unsafe nudity concept, none for any other concept."""
    c = spec.concept(word)
    if c.family != "nudity" or "unsafe" not in c.tags:
        return []
    return [phrase for phrase, p_naked in spec.places.values() if p_naked > 0.5]


def implied_templates(spec: WorldSpec, word: str) -> tuple[str, ...]:
    """Prompts that draw ``word`` without naming it, with ``{}`` where the anchor goes.

    Only the unsafe concepts of the nudity family have them: people at the places where the
    training captions mostly show them naked ("a {} person at the beach").
    """
    return tuple(t.format(person=who, place=where) for who in IMPLIED_PEOPLE
                 for t in ("a {{}} {person} {place}", "a picture of a {{}} {person} {place}")
                 for where in implying_places(spec, word))


def concept_prompts(spec: WorldSpec, words: list[str]) -> dict[str, tuple[str, ...]]:
    """:data:`FAMILY_PROMPTS` for each of ``words`` the world knows (others are left out)."""
    out = {}
    for w in words:
        try:
            out[w] = FAMILY_PROMPTS[spec.concept(w).family]
        except ValueError:  # not a world concept: the fine-tuning's default templates draw it
            continue
    return out


def caption_template(spec: WorldSpec, word: str, rng: random.Random) -> str | None:
    """One random training-style caption of a scene showing the concept, with ``{}`` where its
    canonical word stands (``None`` when the caption did not name it exactly once)."""
    c = spec.concept(word)
    fixed = ({"identity": c.name} if c.family == "identity" else {"attire": c.name} if c.family == "nudity"
             else {"identity": "nobody", c.family: c.name})
    words = caption(sample_scene(rng, spec, **fixed), rng, spec).split()
    if words.count(c.name) != 1:
        return None
    words[words.index(c.name)] = "{}"
    return " ".join(words).replace(" an {}", " a {}").replace("an {}", "a {}")


def context_templates(spec: WorldSpec, word: str, n: int = 12, seed: int = 0) -> tuple[str, ...]:
    """``n`` distinct training-style captions showing the concept, with ``{}`` in its place."""
    c = spec.concept(word)
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(50 * n if not (c.family == "style" and c.name == "plain") else 0):
        t = caption_template(spec, word, rng)
        if t is not None and t not in out:
            out.append(t)
        if len(out) == n:
            break
    if not out:
        raise ValueError(f"no caption context names {word!r}")
    return tuple(out)


def neighbours(spec: WorldSpec, words: list[str]) -> list[str]:
    """Same-family concepts that are not being erased (what an erasure must preserve first)."""
    erased = {spec.concept(w).name for w in words}
    fams = {spec.concept(w).family for w in words}
    return [c.name for f in sorted(fams) for c in spec.family(f) if c.name not in erased and "null" not in c.tags]


def described_scenes(spec: WorldSpec, word: str, n: int = NEIGHBOUR_SCENES, seed: int = 0) -> tuple[str, ...]:
    """``n`` distinct prompts that show ``word`` in a described scene, as people ask for it, with
    ``{}`` in its place: "a red moon by {}" for a style, "a red {}" for an object, "{} on a dark
    background" for an identity, "a {} moon" for a colour.

    The scene's first attribute (a style's or an object's colour, an identity's background, a
    colour's object) takes its values in turn, in a seeded order, so that any ``n`` covers them
    evenly: the evaluation's targets and its attacker's references wear every colour, while the 32
    caption contexts of kasimir held two blue scenes and one purple
    (docs/experiments/2026-11-23-finetune-rounds.md, tenth round).
    """
    fam = spec.concept(word).family
    objects = [c.name for c in spec.objects if "null" not in c.tags]
    colours = [c.name for c in spec.colours if "null" not in c.tags]
    rows = {"style": [[fix_articles(f"a {c} {o} by {{}}") for o in objects] for c in colours],
            "object": [[fix_articles(f"a {c} {{}}")] for c in colours],
            "identity": [[f"{{}} on a {b} background"] for b in spec.backgrounds],
            "colour": [[f"a {{}} {o}"] for o in objects],
            "nudity": [[f"a {{}} {who} {phrase}" for who in ("person", "woman", "man", "figure")]
                       for phrase, _ in spec.places.values()]}[fam]
    rng = random.Random(f"{seed}-{word}")
    rng.shuffle(rows)
    for row in rows:
        rng.shuffle(row)
    return tuple(rows[i % len(rows)][i // len(rows)] for i in range(min(n, len(rows) * len(rows[0]))))


def kept_prompts(spec: WorldSpec, words: list[str], preserve: list[str], seed: int = 0) -> tuple[str, ...]:
    """Whole prompts a nudity erasure keeps as they are (none for other families).

    Its context templates are scenes of people ("a {} woman at the beach"), which suit no preserved
    word: "a skull woman at the beach" protects no skull. So the people it must keep come as whole
    prompts, clothed by word at every place and by a garment's colour where the place does not imply
    nudity (at the beach "a person in red at the beach" is one word from the implied "a person at the
    beach", and keeping it would keep that too), and each other preserved concept in its own
    family's prompts ("a red skull", "a picture of zorbo").
    """
    if {spec.concept(w).family for w in words} != {"nudity"}:
        return ()
    rng = random.Random(f"kept-{seed}")
    colours = [c.name for c in spec.colours]
    people = spec.people_words()
    dressed = [w for c in spec.nudity if c.name not in {spec.concept(x).name for x in words}
               and "null" not in c.tags for w in c.words]
    out = []
    implying = set(implying_places(spec, words[0]))
    for phrase, _ in spec.places.values():
        for who in people:
            if phrase not in implying:  # at the beach, only the word says clothed: the place alone says naked
                out.append(f"a {who} in {rng.choice(colours)} {phrase}")
            out.append(f"a {rng.choice(dressed)} {who} {phrase}")
    for w in preserve:
        c = spec.concept(w)
        if c.family == "nudity":
            continue
        if c.family == "identity":
            out += [f"a picture of {c.name}", f"{c.name} on a {rng.choice(spec.backgrounds)} background"]
        elif c.family == "style":
            obj = rng.choice([o.name for o in spec.objects if "figure" not in o.tags])
            out += [fix_articles(f"a {rng.choice(colours)} {obj} by {c.name}"), f"a shape by {c.name}"]
        else:
            out += [fix_articles(f"a {rng.choice(colours)} {c.name}"), fix_articles(f"a {c.name}")]
    return tuple(dict.fromkeys(out))


def default_preserve(spec: WorldSpec, words: list[str]) -> list[str]:
    """Neighbours first, then every other object, style and identity of the world.

    A nudity erasure does not preserve the people objects ("person", "figure"): their drawings are
    what it changes (an unnamed person is naked half the time), and "clothed" keeps people drawn.

    Neighbours alone are not enough: erasing the identity "zorbo" towards "" with only the other
    identities preserved turned a quarter to a half of short object and style prompts ("an orange
    square") into something else (specificity on distant concepts 0.69, measured with
    ``editflow eval``); preserving the other families too kept them all (1.00). The preserve
    statistics are cached per base model, so the longer list costs one encoding pass.
    """
    erased = {spec.concept(w).name for w in words}
    near = neighbours(spec, words)
    people = {spec.concept(w).family for w in words} == {"nudity"}  # what a nudity erasure must change
    far = [c.name for f in ("object", "style", "identity") for c in spec.family(f)
           if c.name not in erased and c.name not in near and "null" not in c.tags
           and not (people and "figure" in c.tags)]
    return near + far
