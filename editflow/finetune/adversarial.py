"""Adversarial prompt augmentation (ACE, Wang et al. 2025; AdvUnlearn, Zhang et al. 2024):
search the text-embedding space for inputs that still draw the concept on the *patched* model,
and add them to the erase set.

Two searches alternate, both the textual-inversion objective (:mod:`editflow.inversion.invert`)
against the patched model on images of the concept:

* ``inversion`` -- an unconstrained new token from a neutral start (the mean embedding or the
  concept's anchor word): the attack of Pham et al. (2023);
* ``pgd`` -- projected gradient descent on the concept word's own embedding, kept within
  ``pgd_radius · ‖v‖`` of it: adversarial neighbours of the word.
"""

from __future__ import annotations

from editflow.edits.request import ConceptSpec
from editflow.finetune.config import FinetuneConfig
from editflow.inversion import InversionConfig, LearnedTokens, invert


def search_config(concept: ConceptSpec, round_index: int, config: FinetuneConfig) -> tuple[str, InversionConfig]:
    """The ``round_index``-th search for ``concept``: (kind, inversion settings)."""
    seed = config.seed * 1000 + round_index
    if round_index % 2:
        return "pgd", InversionConfig(steps=config.attack_steps, lr=config.attack_lr, init_word=concept.name,
                                      radius=config.pgd_radius, seed=seed)
    starts = [None] + ([concept.anchor] if concept.anchor.strip() else [])
    init = starts[(round_index // 2) % len(starts)]
    return "inversion", InversionConfig(steps=config.attack_steps, lr=config.attack_lr, init_word=init, seed=seed)


def adversarial_embedding(pipe, patch, images, concept: ConceptSpec, round_index: int, config: FinetuneConfig,
                          progress=None) -> LearnedTokens:
    """One adversarial token for ``concept`` against ``patch``, named ``<adv-CONCEPT-ROUND>``."""
    kind, inv = search_config(concept, round_index, config)
    token = f"<adv-{concept.name.replace(' ', '_')}-{round_index}>"
    tok = invert(pipe, images, token, inv, patch=patch, progress=progress)
    tok.metadata.update({"search": kind, "concept": concept.name, "round": round_index})
    return tok
