"""What to erase and what to keep, expanded into prompts and streamed into edit statistics.

Prompt expansion (shared by every closed-form method): each concept is erased under its own word
and its aliases (synonyms, nicknames, user paraphrases), inside several context templates
(``"{}"`` marks the concept). Preserved concepts go through the same templates. The expansion is
streamed: embeddings are folded into :class:`EditStatistics` batch by batch, so memory stays at a
few d x d matrices whatever the number of concepts; a bounded sample is kept for gate calibration.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field

import torch

from editflow.edits.closed_form import EditStatistics
from editflow.edits.conditioning import TokenPolicy, concept_span, encode, positions

DEFAULT_TEMPLATES = ("{}", "a {}", "a picture of a {}", "a drawing of a {}", "a photo of a {}")


@dataclass(frozen=True)
class ConceptSpec:
    """A concept to erase: its word, the other words that name it, and what it should become."""

    name: str
    aliases: tuple[str, ...] = ()
    anchor: str = ""

    def __post_init__(self):
        if not self.name.strip():
            raise ValueError("a concept needs a non-empty name")

    @property
    def words(self) -> tuple[str, ...]:
        return (self.name, *[a for a in self.aliases if a != self.name])


@dataclass
class EraseRequest:
    concepts: list[ConceptSpec]
    preserve: list[str] = field(default_factory=list)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    token_policy: TokenPolicy = TokenPolicy.through_pad

    def __post_init__(self):
        self.token_policy = TokenPolicy(self.token_policy)
        bad = [t for t in self.templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"each template needs exactly one '{{}}' for the concept: {bad[:3]}")
        erased = {w.lower() for c in self.concepts for w in c.words}
        clash = sorted(erased & {p.lower() for p in self.preserve})
        if clash:
            raise ValueError(f"concepts both erased and preserved: {clash}")

    def fingerprint(self) -> str:
        blob = json.dumps({"concepts": [asdict(c) for c in self.concepts], "preserve": self.preserve,
                           "templates": list(self.templates), "policy": self.token_policy.value}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StreamedSet:
    """Statistics plus bounded samples of the erase and preserve embeddings (for the gate)."""

    stats: EditStatistics
    erase_sample: torch.Tensor
    preserve_sample: torch.Tensor


class _Reservoir:
    def __init__(self, size: int, seed: int):
        self.size, self.rng, self.items, self.seen = size, random.Random(seed), [], 0

    def add(self, rows: torch.Tensor) -> None:
        for row in rows:
            self.seen += 1
            if len(self.items) < self.size:
                self.items.append(row)
            else:
                j = self.rng.randrange(self.seen)
                if j < self.size:
                    self.items[j] = row

    def tensor(self, dim: int) -> torch.Tensor:
        return torch.stack(self.items) if self.items else torch.zeros(0, dim)


def _erase_pairs(request: EraseRequest) -> list[tuple[str, str, str]]:
    """(prompt, target prompt, concept word) for every concept word in every template."""
    return [(t.format(w), t.format(c.anchor).strip() if c.anchor else t.format("").strip(), w)
            for c in request.concepts for w in c.words for t in request.templates]


def stream_statistics(pipe, request: EraseRequest, batch: int = 64, sample_size: int = 4096,
                      targets_fn=None, preserve_context: bool = False, progress=None) -> StreamedSet:
    """Encode the expanded prompts batch by batch and fold them into statistics.

    ``targets_fn(prompts, concept_words, c)`` may replace the default target embeddings
    (``c*`` = anchor/empty prompt's features at the same positions). With ``preserve_context``
    the positions before the concept in erase prompts and every position of preserve prompts
    join the preserve set (context tokens such as ``<bos>`` or "a photo of" must not change);
    without it, preserve prompts contribute their concept positions only, as UCE publishes.
    """
    tok = pipe.tokenizer
    stats: EditStatistics | None = None
    keep_e, keep_p = _Reservoir(sample_size, 0), _Reservoir(sample_size, 1)
    pairs = _erase_pairs(request)
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        c = encode(pipe, [p for p, _, _ in chunk])
        t = (targets_fn([p for p, _, _ in chunk], [w for _, _, w in chunk], c) if targets_fn
             else encode(pipe, [q for _, q, _ in chunk]))
        stats = stats or EditStatistics.zeros(c.shape[-1])
        rows_c, rows_t, context = [], [], []
        for k, (prompt, _, word) in enumerate(chunk):
            idx = positions(tok, prompt, word, request.token_policy, c.shape[1])
            rows_c.append(c[k, idx])
            rows_t.append(t[k, idx])
            if preserve_context:
                context.append(c[k, :concept_span(tok, prompt, word)[0]])
        rc, rt = torch.cat(rows_c), torch.cat(rows_t)
        stats.add_erase(rc, rt)
        keep_e.add(rc)
        if context:
            stats.add_preserve(torch.cat(context))
            keep_p.add(torch.cat(context))
        if progress:
            progress(len(chunk))
    pres = [(t.format(w), w) for w in request.preserve for t in request.templates]
    for i in range(0, len(pres), batch):
        chunk = pres[i:i + batch]
        c = encode(pipe, [p for p, _ in chunk])
        stats = stats or EditStatistics.zeros(c.shape[-1])
        rows = (c.reshape(-1, c.shape[-1]) if preserve_context else
                torch.cat([c[k, positions(tok, p, w, request.token_policy, c.shape[1])]
                           for k, (p, w) in enumerate(chunk)]))
        stats.add_preserve(rows)
        keep_p.add(rows)
        if progress:
            progress(len(chunk))
    if stats is None:
        dim = encode(pipe, [""]).shape[-1]
        stats = EditStatistics.zeros(dim)
    return StreamedSet(stats, keep_e.tensor(stats.dim), keep_p.tensor(stats.dim))
