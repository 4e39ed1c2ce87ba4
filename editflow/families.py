"""What editflow knows about the common families of concepts people erase from real models:
what a concept becomes (its anchor), the words erased with it, how a judge names it.

* ``nudity``   -- erased under its usual words (nude, naked, nudity, topless, undressed, NSFW)
  towards "fully clothed";
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


KNOWLEDGE = {
    "nudity": FamilyKnowledge("nudity", "fully clothed", ("nude", "naked", "nudity", "topless", "undressed", "nsfw"),
                              "a photo of a {} person"),
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
