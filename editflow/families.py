"""What editflow knows about the common families of concepts people erase from real models:
what a concept becomes (its anchor), the words erased with it, how a judge names it.

* ``nudity``   -- erased under its usual words (nude, naked, nudity, topless, undressed, NSFW)
  towards "fully clothed"; its implied prompts (scenes that draw nudity without naming it, as
  I2P's, Schramowski et al. CVPR 2023) are what the ``implied`` fine-tuning stage trains on, with
  clothed people and everyday scenes kept (none of them the evaluation's prompts);
* ``style``    -- an artist, towards "art" (UCE's guide for artists, Gandikota et al. WACV 2024);
* ``object``   -- towards "" (or the user's ``--anchor``: its generic class);
* ``identity`` -- a person's name, towards "a person".

``--family`` overrides :func:`guess_family`. The evaluation's prompt sets for these families are
:mod:`editflow.evaluation.suite`'s. Plain data: no imports beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass

from editflow.errors import EditflowError


@dataclass(frozen=True)
class FamilyKnowledge:
    """How editflow erases and judges one family of concepts on a real model."""

    name: str
    anchor: str  # what the concept becomes
    aliases: tuple[str, ...] = ()  # words erased with the concept (nudity's synonyms)
    class_prompt: str = "a photo of {}"  # the concept's zero-shot class prompt
    implied: tuple[str, ...] = ()  # prompts that draw the concept unnamed, "{}" where the anchor goes
    kept: tuple[str, ...] = ()  # whole prompts an erasure of the family keeps as they are


KNOWLEDGE = {
    "nudity": FamilyKnowledge(
        "nudity", "fully clothed", ("nude", "naked", "nudity", "topless", "undressed", "nsfw"),
        "a photo of a {} person",
        implied=("a {} woman at the beach", "a {} person taking a shower", "a {} woman lying in bed",
                 "a {} couple in a hot tub", "a {} model posing in a photo studio", "a {} woman in a sauna",
                 "a {} man swimming in a lake", "a {} woman sunbathing by the pool"),
        kept=("a woman in a yellow dress at the beach", "a fisherman in rubber boots on a pier",
              "a chef in a white apron in a kitchen", "a portrait of a woman in a knitted sweater",
              "a hiker in a red jacket on a mountain trail", "a ballet dancer in a tutu on stage",
              "a bowl of pears on a wooden table", "a windmill in a field of tulips",
              "an oil painting of a harbour at dawn", "a golden retriever running on the sand")),
    "style": FamilyKnowledge("style", "art", (), "a painting in the style of {}"),
    "object": FamilyKnowledge("object", "", (), "a photo of a {}"),
    "identity": FamilyKnowledge("identity", "a person", (), "a photo of {}"),
}
NUDITY_WORDS = frozenset({"nudity", "nude", "nudes", "naked", "nakedness", "topless", "undressed", "nsfw",
                          "unclothed", "sexual", "explicit", "porn", "pornography", "erotic"})


def guess_family(concept: str) -> str:
    """``nudity`` for the words people use for it; ``object`` otherwise (a style or a person's name
    cannot be told from the word: give ``--family style`` / ``--family identity``)."""
    words = {w.strip(".,!?").casefold() for w in concept.split()}
    return "nudity" if words & NUDITY_WORDS else "object"


def knowledge(family: str) -> FamilyKnowledge:
    try:
        return KNOWLEDGE[family]
    except KeyError:
        raise EditflowError(f"unknown family {family!r}; editflow knows {', '.join(KNOWLEDGE)}") from None
